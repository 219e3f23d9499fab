//! Text index tests: BM25 sanity, name and folder words, deletes, commit payload across reopen,
//! hostile queries, locking.

use std::path::Path;

use super::*;

fn ids(hits: &[TextHit]) -> Vec<(TextKind, u64)> {
    hits.iter().map(|h| (h.kind, h.id)).collect()
}

fn sample(dir: &Path) -> TextIndex {
    let t = TextIndex::open_or_create(dir).unwrap();
    let p = Path::new("/photos/misc/x.jpg");
    t.upsert_image(1, Some("a dog on the beach"), p).unwrap();
    t.upsert_image(
        2,
        Some("a dog and another dog playing with a dog toy on the beach"),
        p,
    )
    .unwrap();
    t.upsert_image(3, Some("a cat sleeping on a sofa"), p)
        .unwrap();
    t.upsert_image(
        4,
        None,
        Path::new("/home/u/Photos/2023/Rome trip/IMG_20230714_beachDay.jpg"),
    )
    .unwrap();
    t.add_text(1, "sunset over the mountains").unwrap();
    t.commit(1).unwrap();
    t
}

#[test]
fn bm25_ranks_more_matches_higher() {
    let tmp = tempfile::tempdir().unwrap();
    let t = TextIndex::open_or_create(tmp.path()).unwrap();
    let p = Path::new("/x/y.jpg");
    // Equal lengths (5 words), so BM25's length normalisation cannot decide the order.
    t.upsert_image(10, Some("dog running on the beach"), p)
        .unwrap();
    t.upsert_image(11, Some("dog running on the grass"), p)
        .unwrap();
    t.upsert_image(12, Some("dog chasing dog on beach"), p)
        .unwrap();
    t.upsert_image(13, Some("cat sleeping on the sofa"), p)
        .unwrap();
    t.commit(1).unwrap();
    let hits = t.search("dog beach", 10, &[]).unwrap();
    // 12: both words, "dog" twice; 10: both words once; 11: one word; 13: none.
    assert_eq!(
        ids(&hits),
        vec![
            (TextKind::Image, 12),
            (TextKind::Image, 10),
            (TextKind::Image, 11)
        ]
    );
    assert!(hits[0].score > hits[1].score && hits[1].score > hits[2].score);
    // Stemming: "dogs" finds "dog".
    assert_eq!(t.search("dogs", 10, &[]).unwrap().len(), 3);
    // Caption beats folder words (weights 1.0 vs 0.5) at equal statistics.
    t.upsert_image(20, Some("lighthouse"), p).unwrap();
    t.upsert_image(21, None, Path::new("/a/lighthouse/b.jpg"))
        .unwrap();
    t.commit(2).unwrap();
    let hits = t.search("lighthouse", 10, &[]).unwrap();
    assert_eq!(
        ids(&hits),
        vec![(TextKind::Image, 20), (TextKind::Image, 21)]
    );
}

#[test]
fn file_name_and_folder_words_are_found() {
    let tmp = tempfile::tempdir().unwrap();
    let t = sample(tmp.path());
    for q in ["rome", "trip", "2023", "20230714", "beachday", "day", "img"] {
        let hits = t.search(q, 10, &[TextKind::Image]).unwrap();
        assert!(
            ids(&hits).contains(&(TextKind::Image, 4)),
            "query {q:?} missed image 4: {hits:?}"
        );
    }
    // `home` and `u` are above FOLDER_DEPTH folders: not indexed.
    assert!(t.search("home", 10, &[]).unwrap().is_empty());
    assert!(
        t.search("jpg", 10, &[]).unwrap().is_empty(),
        "extension is not a word"
    );
}

#[test]
fn kinds_filter_and_phrases() {
    let tmp = tempfile::tempdir().unwrap();
    let t = sample(tmp.path());
    assert_eq!(
        ids(&t.search("sunset", 10, &[]).unwrap()),
        vec![(TextKind::Text, 1)]
    );
    assert!(t
        .search("sunset", 10, &[TextKind::Image])
        .unwrap()
        .is_empty());
    let only_texts = t.search("sunset dog", 10, &[TextKind::Text]).unwrap();
    assert_eq!(ids(&only_texts), vec![(TextKind::Text, 1)]);
    // The kind filter adds no score.
    let all = t.search("sunset", 10, &[]).unwrap();
    let texts = t.search("sunset", 10, &[TextKind::Text]).unwrap();
    assert_eq!(all[0].score, texts[0].score);
    // A phrase needs the words adjacent: "dog toy" only in image 2.
    assert_eq!(
        ids(&t.search("\"dog toy\"", 10, &[]).unwrap()),
        vec![(TextKind::Image, 2)]
    );
    assert_eq!(t.search("x", 0, &[]).unwrap(), vec![]);
}

#[test]
fn delete_and_replace_then_search() {
    let tmp = tempfile::tempdir().unwrap();
    let t = sample(tmp.path());
    assert_eq!(t.num_docs(), 5);
    t.remove_image(1);
    t.remove_text(1);
    t.remove_text(99); // absent: no-op
                       // Not visible before commit.
    assert_eq!(t.search("sunset", 10, &[]).unwrap().len(), 1);
    t.commit(2).unwrap();
    assert_eq!(t.num_docs(), 3);
    assert!(t.search("sunset", 10, &[]).unwrap().is_empty());
    assert!(!ids(&t.search("dog", 10, &[]).unwrap()).contains(&(TextKind::Image, 1)));
    // Upsert replaces: image 3's new caption, old words gone, one document.
    t.upsert_image(3, Some("a red bicycle"), Path::new("/p/bike.png"))
        .unwrap();
    t.commit(3).unwrap();
    assert_eq!(t.num_docs(), 3);
    assert!(t.search("cat", 10, &[]).unwrap().is_empty());
    assert_eq!(
        ids(&t.search("bicycle", 10, &[]).unwrap()),
        vec![(TextKind::Image, 3)]
    );
    // Ids of different kinds are separate: text 3 does not replace image 3.
    t.add_text(3, "bicycle race").unwrap();
    t.commit(4).unwrap();
    assert_eq!(t.search("bicycle", 10, &[]).unwrap().len(), 2);
    t.clear().unwrap();
    t.commit(5).unwrap();
    assert_eq!(t.num_docs(), 0);
}

#[test]
fn commit_payload_survives_reopen_and_uncommitted_work_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let t = TextIndex::open_or_create(tmp.path()).unwrap();
        assert_eq!(t.committed_batch().unwrap(), None);
        t.add_text(7, "first").unwrap();
        t.commit(41).unwrap();
        assert_eq!(t.committed_batch().unwrap(), Some(41));
        t.add_text(8, "second").unwrap(); // never committed
    }
    let t = TextIndex::open_or_create(tmp.path()).unwrap();
    assert_eq!(t.committed_batch().unwrap(), Some(41));
    assert_eq!(t.num_docs(), 1);
    assert!(t.search("second", 10, &[]).unwrap().is_empty());
    t.add_text(9, "third").unwrap();
    t.rollback().unwrap();
    t.commit(42).unwrap();
    assert_eq!((t.committed_batch().unwrap(), t.num_docs()), (Some(42), 1));
}

#[test]
fn hostile_queries_never_error() {
    let tmp = tempfile::tempdir().unwrap();
    let t = sample(tmp.path());
    for q in [
        "\"unbalanced",
        "a:b",
        "((",
        "",
        "   ",
        "))(( ]] [[ {{",
        "caption:dog",
        "-dog",
        "+dog",
        "dog^2",
        "dog~",
        "*",
        "?",
        "\\",
        "\"\"",
        "NOT AND OR",
        "id:1",
        "kind:0 TO 5",
        "[1 TO 2]",
        "🐕 海滩",
        "\u{0}",
        &"dog ".repeat(2000),
    ] {
        let r = t.search(q, 10, &[]);
        assert!(r.is_ok(), "query {q:?} failed: {r:?}");
    }
    assert!(t.search("", 10, &[]).unwrap().is_empty());
    // Syntax characters are plain separators: these still find the dog images.
    assert!(t.search("caption:dog", 10, &[]).unwrap().len() >= 2);
    assert!(
        t.search("\"unbalanced dog", 10, &[]).unwrap().is_empty(),
        "phrase runs to the end"
    );
    assert!(t.search("(dog", 10, &[]).unwrap().len() >= 2);
}

#[test]
fn a_second_writer_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let _first = TextIndex::open_or_create(tmp.path()).unwrap();
    let second = TextIndex::open_or_create(tmp.path());
    assert!(
        matches!(second, Err(TextIndexError::Locked { .. })),
        "{second:?}"
    );
}
