//! The output assembler with the real tokenizer: streamed pieces add up to the decoded text,
//! partial UTF-8 characters wait, stop sequences that span tokens cut the text where they
//! begin, and text that could start a stop sequence is held back, then released at the end.
mod support;

use ferrinfer_server::text::Assembler;

fn run(text: &str, stops: &[&str]) -> (Vec<String>, String, bool) {
    let tok = support::model().tokenizer.clone();
    let ids = tok.encode(text, false).unwrap();
    let mut a = Assembler::new(tok, stops.iter().map(|s| s.to_string()).collect());
    let mut pieces = Vec::new();
    for id in ids {
        let p = a.push(id).unwrap();
        pieces.push(p.text);
        if p.stopped {
            break;
        }
    }
    pieces.push(a.finish());
    let all = pieces.concat();
    (pieces, all, a.stopped())
}

#[test]
fn pieces_add_up_to_the_text() {
    for text in [
        "Hello, world! 123",
        "héllo 日本語 🎉 done",
        "  spaces\n\nand\tTabs",
    ] {
        let (pieces, all, stopped) = run(text, &[]);
        assert_eq!(all, text);
        assert!(!stopped);
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    }
}

#[test]
fn a_stop_sequence_across_tokens_cuts_where_it_begins() {
    let (pieces, all, stopped) = run("The cat sat on the mat and slept.", &["t on t"]);
    assert!(stopped);
    assert_eq!(all, "The cat sa");
    // Nothing past the cut was ever sent.
    let mut sent = String::new();
    for p in &pieces {
        sent.push_str(p);
        assert!("The cat sa".starts_with(&sent), "{pieces:?}");
    }
    // The first of several stop sequences in the text wins.
    let (_, all, _) = run("one two three four", &["four", "two"]);
    assert_eq!(all, "one ");
    // A stop sequence at the very start leaves no text.
    let (_, all, stopped) = run("Stop here", &["Stop"]);
    assert!(stopped);
    assert_eq!(all, "");
}

#[test]
fn a_possible_stop_prefix_is_held_back_then_released() {
    // "mat" could start "match", so it is held until the end, then released.
    let (pieces, all, stopped) = run("The cat sat on the mat", &["match"]);
    assert!(!stopped);
    assert_eq!(all, "The cat sat on the mat");
    assert!(pieces.last().unwrap().ends_with("mat"), "{pieces:?}");
    // Multi-byte stop sequences.
    let (_, all, stopped) = run("prix: 5 €, merci", &["€"]);
    assert!(stopped);
    assert_eq!(all, "prix: 5 ");
}
