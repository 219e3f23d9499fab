//! Query-path tests on a real store: synthetic scenes embedded with the small fixture model.

use std::sync::OnceLock;

use super::test_store::{build, capture_time, small_models};
use super::*;
use crate::indexing::IndexModels;

fn models() -> &'static IndexModels {
    static MODELS: OnceLock<IndexModels> = OnceLock::new();
    MODELS.get_or_init(small_models)
}

fn searcher() -> Searcher<'static> {
    let m = models();
    Searcher::new(
        &m.retriever,
        &m.retrieval.tokenizer,
        &m.retrieval.preprocess,
        SearchSettings::for_device(&Device::Cpu),
    )
}

const N: usize = 24;

#[test]
fn a_confident_itc_winner_stays_first_and_near_ties_go_to_the_words() {
    // Candidates as text_candidates leaves them: 1 leads ITC by 0.05 with no word match, 2 is
    // the best word match, 3 is 0.004 behind 4 in ITC but has a word match.
    let dir = tempfile::tempdir().unwrap();
    let (library, _) = build(dir.path(), models(), 4, false);
    let records: Vec<ImageRecord> = library.store().images().map(|r| r.unwrap()).collect();
    let hit = |n: u64, itc: f32, share: Option<f32>| ImageHit {
        record: ImageRecord {
            id: n,
            ..records[0].clone()
        },
        scores: HitScores {
            itc,
            bm25: share,
            bm25_share: share.unwrap_or(0.0),
            ..HitScores::default()
        },
    };
    let mut hits = vec![
        hit(2, 0.40, Some(1.0)),
        hit(3, 0.296, Some(0.6)),
        hit(1, 0.45, None),
        hit(4, 0.30, None),
    ];
    let s = searcher();
    let unfitted = SearchFusion::unfitted(fusion::NO_CAPTIONS, crate::itm_fusion::ItmFusion::LAVIS);
    let no_itm = |_: &[ImageHit]| -> Result<Vec<ItmOutput>, SearchError> { unreachable!() };
    assert_eq!(s.order(&mut hits, &unfitted, 0, no_itm).unwrap(), 0);
    let order: Vec<u64> = hits.iter().map(|h| h.record.id).collect();
    assert_eq!(order, vec![1, 2, 3, 4]);
    assert!((hits[2].scores.fused - (0.296 + 0.6 * fusion::UNFITTED_BM25_WEIGHT)).abs() < 1e-6);
    // A fitted β that trusts the words puts the best word match first.
    let words = SearchFusion {
        bm25_weight: 0.1,
        ..unfitted.clone()
    };
    s.order(&mut hits, &words, 0, no_itm).unwrap();
    assert_eq!(hits[0].record.id, 2);
    // Re-ranking the top 2 by first stage + w · logit: the logit decides between them, the
    // rest follow in first-stage order; probabilities are calibrated.
    let reranking = SearchFusion {
        itm_logit_weight: 0.5,
        calibration: ItmCalibration {
            scale: 2.0,
            bias: 0.0,
        },
        ..unfitted
    };
    let n = s
        .order(&mut hits, &reranking, 2, |chunk| {
            Ok(chunk
                .iter()
                .map(|h| {
                    let logit = if h.record.id == 2 { 1.0 } else { -1.0 };
                    ItmOutput {
                        logit,
                        log_odds: logit,
                    }
                })
                .collect())
        })
        .unwrap();
    assert_eq!(n, 2);
    let order: Vec<u64> = hits.iter().map(|h| h.record.id).collect();
    assert_eq!(order, vec![2, 1, 3, 4]);
    assert!((hits[0].scores.score - (0.41 + 0.5)).abs() < 1e-6);
    assert!((hits[0].scores.itm.unwrap() - fusion::sigmoid(2.0)).abs() < 1e-6);
    assert!(hits[2].scores.itm.is_none() && hits[2].scores.score == hits[2].scores.fused);
}

#[test]
fn text_search_orders_by_score_then_fused_and_scores_are_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let (library, captions) = build(dir.path(), models(), N, true);
    let s = searcher();
    let mut q = TextQuery::new(captions[3].clone(), 10);
    q.rerank = Some(6);
    let r = s.search_text(&library, &q).unwrap();
    assert_eq!(r.hits.len(), 10);
    assert_eq!(r.reranked, 6);
    let (head, tail) = r.hits.split_at(6);
    let fusion = &s.settings().fusion;
    for w in head.windows(2) {
        let (a, b) = (&w[0].scores, &w[1].scores);
        assert!(a.score > b.score || (a.score == b.score && a.itc >= b.itc));
    }
    for h in head {
        let sc = &h.scores;
        let share = sc.bm25_share;
        assert!((sc.fused - fusion.first_stage(sc.itc, share)).abs() < 1e-6);
        assert!((sc.score - fusion.reranked(sc.fused, sc.itm_logit.unwrap())).abs() < 1e-6);
    }
    assert!(tail.iter().all(|h| h.scores.itm.is_none()));
    for w in tail.windows(2) {
        assert!(w[0].scores.fused >= w[1].scores.fused);
    }
    // The exact caption is a word hit for its image, and every ITC equals the max-dot.
    assert!(r.hits.iter().any(|h| h.scores.bm25_rank.is_some()));
    let text = s.embed_text(&captions[3]).unwrap();
    for h in &r.hits {
        let v = library.store().vectors(h.record.id).unwrap().unwrap();
        assert!((max_dot(&text, &v, 16) - h.scores.itc).abs() < 1e-5);
    }
    // ITM probabilities equal a direct call of the model on the image and the text.
    let m = models();
    let top = &head[0];
    let tokens = s.image_tokens(&library, &top.record).unwrap();
    let batch = m
        .retrieval
        .tokenizer
        .batch(&[&captions[3]], None, &Device::Cpu)
        .unwrap();
    let p = m.retriever.itm_pairs(&tokens, &batch).unwrap().probability[0];
    assert!(
        (p - top.scores.itm.unwrap()).abs() < 1e-5,
        "{p} vs {:?}",
        top.scores.itm
    );
    assert!(r.timing.total >= r.timing.itm && r.timing.itm > 0.0);
}

#[test]
fn cache_off_recomputes_features_and_agrees_with_the_cache() {
    let on_dir = tempfile::tempdir().unwrap();
    let off_dir = tempfile::tempdir().unwrap();
    let (on, captions) = build(on_dir.path(), models(), 12, true);
    let (off, _) = build(off_dir.path(), models(), 12, false);
    assert!(off.store().features(1).unwrap().is_none());
    let s = searcher();
    let mut q = TextQuery::new(captions[0].clone(), 12);
    q.rerank = Some(12);
    let a = s.search_text(&on, &q).unwrap();
    let b = s.search_text(&off, &q).unwrap();
    // Same ids (ids are assigned in the same order); ITM from f16-cached vs f32-recomputed ViT
    // output agrees to 2e-3 (f16 has ~3 significant digits).
    let by_id = |r: &ImageResults| {
        let mut v: Vec<(u64, f32)> = r
            .hits
            .iter()
            .map(|h| (h.record.id, h.scores.itm.unwrap()))
            .collect();
        v.sort_by_key(|x| x.0);
        v
    };
    for ((ia, pa), (ib, pb)) in by_id(&a).into_iter().zip(by_id(&b)) {
        assert_eq!(ia, ib);
        assert!((pa - pb).abs() < 2e-3, "image {ia}: {pa} vs {pb}");
    }
}

#[test]
fn filters_min_match_and_date_sort() {
    let dir = tempfile::tempdir().unwrap();
    let (library, captions) = build(dir.path(), models(), N, true);
    let s = searcher();
    // Folder filter: only sub1 (odd scenes); k larger than what passes.
    let mut q = TextQuery::new(captions[1].clone(), 20);
    q.filters.folder = Some(dir.path().join("images/sub1"));
    q.rerank = Some(4);
    let r = s.search_text(&library, &q).unwrap();
    assert_eq!(
        r.hits.len(),
        N / 2,
        "the filter applies before the top is taken"
    );
    assert!(r
        .hits
        .iter()
        .all(|h| h.record.path.starts_with(dir.path().join("images/sub1"))));
    // A folder that is only a string prefix of another does not match.
    q.filters.folder = Some(dir.path().join("images/sub"));
    assert!(s.search_text(&library, &q).unwrap().hits.is_empty());

    // Date range: scenes 0..=5 have capture times 1.6e9 + i days (2 and 5 have none).
    let mut q = TextQuery::new(captions[0].clone(), 20);
    q.filters.from_s = capture_time(0);
    q.filters.to_s = Some(capture_time(4).unwrap() + 1);
    let r = s.search_text(&library, &q).unwrap();
    let mut ids: Vec<u64> = r.hits.iter().map(|h| h.record.id).collect();
    ids.sort();
    let expected: Vec<u64> = library
        .store()
        .images()
        .map(|r| r.unwrap())
        .filter(|r| {
            r.captured_at_s
                .is_some_and(|t| t <= capture_time(4).unwrap())
        })
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(ids.len(), 4);
    // Format filter.
    q.filters = Filters {
        format: Some("jpeg".into()),
        ..Filters::default()
    };
    assert!(s.search_text(&library, &q).unwrap().hits.is_empty());

    // min_match keeps exactly the re-ranked hits at or above the cutoff.
    let mut q = TextQuery::new(captions[2].clone(), 20);
    q.rerank = Some(8);
    let all = s.search_text(&library, &q).unwrap();
    let mut probs: Vec<f32> = all.hits.iter().filter_map(|h| h.scores.itm).collect();
    probs.sort_by(|a, b| b.total_cmp(a));
    let cut = probs[3];
    q.min_match = Some(cut);
    let r = s.search_text(&library, &q).unwrap();
    assert_eq!(r.hits.len(), probs.iter().filter(|&&p| p >= cut).count());
    assert!(r.hits.iter().all(|h| h.scores.itm.unwrap() >= cut));

    // Date sort: same set as relevance, newest first.
    let mut q = TextQuery::new(captions[2].clone(), 8);
    let rel = s.search_text(&library, &q).unwrap();
    q.sort = SortOrder::Date;
    let by_date = s.search_text(&library, &q).unwrap();
    let set = |r: &ImageResults| {
        let mut v: Vec<u64> = r.hits.iter().map(|h| h.record.id).collect();
        v.sort();
        v
    };
    assert_eq!(set(&rel), set(&by_date));
    for w in by_date.hits.windows(2) {
        assert!(w[0].record.date_seconds() >= w[1].record.date_seconds());
    }
}

#[test]
fn bad_requests_are_user_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (library, _) = build(dir.path(), models(), 4, false);
    let s = searcher();
    let err = |q: TextQuery| s.search_text(&library, &q).unwrap_err();
    assert!(matches!(
        err(TextQuery::new("  ", 5)),
        SearchError::EmptyQuery
    ));
    assert!(matches!(
        err(TextQuery::new("x".repeat(1001), 5)),
        SearchError::QueryTooLong { .. }
    ));
    assert!(matches!(
        err(TextQuery::new("red", 0)),
        SearchError::KOutOfRange { .. }
    ));
    assert!(matches!(
        err(TextQuery::new("red", 1_000_000_000)),
        SearchError::KOutOfRange { .. }
    ));
    let mut q = TextQuery::new("red", 5);
    q.rerank = Some(100_000);
    assert!(err(q).is_user_error());
    assert!(matches!(
        s.similar_images(&library, 999, 3),
        Err(SearchError::UnknownImage(999))
    ));
    assert!(matches!(
        s.encode_image_bytes(b"not an image", "x.png"),
        Err(SearchError::BadImage(_))
    ));
}

#[test]
fn image_to_text_and_image_to_image() {
    let dir = tempfile::tempdir().unwrap();
    let (library, captions) = build(dir.path(), models(), 12, true);
    let s = searcher();
    let record = library.store().image(5).unwrap().unwrap();
    let bytes = std::fs::read(&record.path).unwrap();
    let image = s.encode_image_bytes(&bytes, "scene.png").unwrap();

    // The uploaded copy of an indexed image is its own nearest image, with similarity equal to
    // the max over its own vector pairs (≥ 1 - 1e-4 for unit vectors), and the indexed image
    // excludes itself.
    let up = s.similar_to_upload(&library, &image, 3).unwrap();
    assert_eq!(up.hits[0].record.id, 5);
    assert!((up.hits[0].similarity - 1.0).abs() < 1e-4);
    let own = s.similar_images(&library, 5, 3).unwrap();
    assert!(own.hits.iter().all(|h| h.record.id != 5));
    assert_eq!(own.hits.len(), 3);
    let v5 = library.store().vectors(5).unwrap().unwrap();
    for h in &own.hits {
        let v = library.store().vectors(h.record.id).unwrap().unwrap();
        assert!((max_dot(&v5, &v, 16) - h.similarity).abs() < 1e-5);
    }

    // Image → text: every caption is a candidate; the re-ranked head is ordered by
    // ITC + w · ITM logit (LAVIS's sum without a fitted weight).
    let r = s.image_to_text(&library, &image, 12, Some(5)).unwrap();
    assert_eq!(r.hits.len(), 12);
    assert_eq!(r.reranked, 5);
    for w in r.hits[..5].windows(2) {
        assert!(w[0].score >= w[1].score);
    }
    assert!(r.hits[..5]
        .iter()
        .all(|h| h.itm.is_some() && h.score != h.itc));
    assert!(r.hits.iter().all(|h| captions.contains(&h.text)));
    assert!(r
        .hits
        .iter()
        .all(|h| matches!(h.source, TextSource::Caption { .. })));
}
