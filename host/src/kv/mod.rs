//! The KV-cache engine: host-owned page tables over a pool of fixed-size pages.
pub mod cache;
pub mod page_table;
pub mod pool;

pub use cache::{AppendStep, PagedKvCache};
pub use page_table::{AppendPlan, BatchPages, PageCopy, PageTable, SeqId};
pub use pool::{
    AppendMeta, DeviceAppendMeta, KvLayout, KvPool, KvPoolConfig, PoolSize, RowStrides, Rows,
    RowsMut,
};
