//! The KV-cache engine: host-owned page tables over a pool of fixed-size pages.
mod append_meta;
mod append_target;
mod batch_pages;
pub mod cache;
pub mod page_table;
pub mod pool;
mod pool_config;
mod rows;
pub(crate) mod storage;

pub use append_target::AppendTarget;
pub use batch_pages::BatchPages;
pub use cache::{AppendStep, PagedKvCache};
pub use page_table::{AppendPlan, PageCopy, PageTable, SeqId};
pub use pool::{AppendMeta, DeviceAppendMeta, KvPool, Rows, RowsMut};
pub use pool_config::{KvLayout, KvPoolConfig, PoolSize, RowStrides};
