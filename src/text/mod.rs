//! Full-text search (tantivy, BM25) over what users can type about their photos: captions,
//! file-name words, folder words, and user-added texts.
//!
//! One tantivy index per store, in the folder given to [`TextIndex::open_or_create`] (the store
//! uses `<store>/text`). Each document is an image or a user text, keyed by its store id; an
//! image carries `caption`, `name` and `folder` words ([`words`] explains how names are split),
//! a text carries `body`. All four fields use tantivy's `en_stem` analyzer (lower-case, English
//! stemming), so `dogs` finds `dog`.
//!
//! Queries are user input, never a query language: [`TextIndex::search`] cuts the text into
//! words and `"quoted phrases"` (an unbalanced quote just ends the phrase at the end of the text),
//! and every word or phrase is an optional clause over all fields. Nothing a user types can make
//! it fail; documents matching more (and rarer) words rank higher (BM25 sum). Field weights:
//! caption and body 1.0, file name 0.8, folders 0.5 — folder words are shared by whole albums and
//! say less about one photo.
//!
//! Durability: changes become visible and durable only at [`TextIndex::commit`], which stores
//! the store batch id in tantivy's commit payload; after a crash [`TextIndex::committed_batch`]
//! says which batches to replay from the store.
//!
//! Persisted format: the schema below. Changing it needs a new [`SCHEMA_VERSION`]; an index of
//! another version is refused with [`TextIndexError::SchemaMismatch`] (the caller deletes the
//! folder and rebuilds it from the store).

#[cfg(test)]
mod tests;
pub mod words;

use std::path::{Path, PathBuf};

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, Occur, PhraseQuery, Query, TermQuery,
};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED,
    STRING,
};
use tantivy::tokenizer::TokenStream;
use tantivy::{Index, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, TantivyError, Term};

/// Version of the schema built by this module, kept in the commit payload.
pub const SCHEMA_VERSION: u32 = 1;

/// Longest typed query that also scores as a phrase (longer ones are pasted text, not a
/// description, and a phrase query's cost grows with its length).
const MAX_PHRASE_TERMS: usize = 32;

/// Writer memory budget: one indexing thread (batches are small; the model is the bottleneck).
const WRITER_BYTES: usize = 50_000_000;

/// What a text document stands for. Stored as a u64 (`Image` = 0, `Text` = 1): persisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextKind {
    /// An indexed image: caption, file-name and folder words.
    Image,
    /// A text added by the user (image → text search target).
    Text,
}

impl TextKind {
    fn code(self) -> u64 {
        match self {
            TextKind::Image => 0,
            TextKind::Text => 1,
        }
    }
    fn from_code(c: u64) -> Option<Self> {
        match c {
            0 => Some(TextKind::Image),
            1 => Some(TextKind::Text),
            _ => None,
        }
    }
    fn key(self, id: u64) -> String {
        match self {
            TextKind::Image => format!("i{id}"),
            TextKind::Text => format!("t{id}"),
        }
    }
}

/// One BM25 hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextHit {
    /// Image or user text.
    pub kind: TextKind,
    /// The store id given when the document was added.
    pub id: u64,
    /// BM25 score (sum over matched words and fields, weighted).
    pub score: f32,
}

/// Errors of the text index.
#[derive(Debug, thiserror::Error)]
pub enum TextIndexError {
    /// The folder could not be created or opened.
    #[error("cannot open text index folder {path}: {reason}")]
    Open {
        /// The index folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Another process (or another `TextIndex` in this one) holds the index writer.
    #[error("text index at {path} is in use by another process; stop it and retry")]
    Locked {
        /// The index folder.
        path: PathBuf,
    },
    /// The folder holds an index of another schema version.
    #[error("text index at {path} has another schema ({found}); delete the folder, it is rebuilt from the store")]
    SchemaMismatch {
        /// The index folder.
        path: PathBuf,
        /// What was found.
        found: String,
    },
    /// A tantivy operation failed.
    #[error("text index at {path}: {what} failed: {source}")]
    Tantivy {
        /// The index folder.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// tantivy's error.
        source: TantivyError,
    },
}

#[derive(Clone, Copy)]
struct Fields {
    key: Field,
    kind: Field,
    id: Field,
    caption: Field,
    name: Field,
    folder: Field,
    body: Field,
}

fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer("en_stem")
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        kind: b.add_u64_field("kind", FAST | INDEXED | STORED),
        id: b.add_u64_field("id", FAST | INDEXED | STORED),
        caption: b.add_text_field("caption", text.clone()),
        name: b.add_text_field("name", text.clone()),
        folder: b.add_text_field("folder", text.clone()),
        body: b.add_text_field("body", text),
    };
    (b.build(), fields)
}

/// The commit payload: which store batch the committed state contains.
#[derive(serde::Serialize, serde::Deserialize)]
struct Payload {
    schema: u32,
    batch_id: u64,
}

/// The tantivy index with its single writer and a reader refreshed at each commit.
pub struct TextIndex {
    path: PathBuf,
    index: Index,
    /// Behind a lock so that changes and commits need only `&self`: a server applies and
    /// commits a batch's words while searches keep reading (see `Library::catch_up_words`).
    writer: std::sync::Mutex<IndexWriter>,
    reader: IndexReader,
    fields: Fields,
}

impl std::fmt::Debug for TextIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextIndex")
            .field("path", &self.path)
            .finish()
    }
}

impl TextIndex {
    /// Opens the index in `dir`, creating the folder and an empty index if needed. Holds the
    /// index's writer lock until dropped.
    pub fn open_or_create(dir: &Path) -> Result<Self, TextIndexError> {
        let path = dir.to_path_buf();
        let open_err = |reason: String| TextIndexError::Open {
            path: path.clone(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let directory = MmapDirectory::open(dir).map_err(|e| open_err(e.to_string()))?;
        let (schema, fields) = schema();
        let index = Index::open_or_create(directory, schema).map_err(|e| match e {
            TantivyError::SchemaError(found) => TextIndexError::SchemaMismatch {
                path: path.clone(),
                found,
            },
            other => open_err(other.to_string()),
        })?;
        let tantivy_err = |what| {
            let path = path.clone();
            move |source| TextIndexError::Tantivy { path, what, source }
        };
        let metas = index
            .load_metas()
            .map_err(tantivy_err("reading metadata"))?;
        if let Some(p) = &metas.payload {
            match serde_json::from_str::<Payload>(p) {
                Ok(p) if p.schema == SCHEMA_VERSION => {}
                _ => {
                    return Err(TextIndexError::SchemaMismatch {
                        path,
                        found: format!("commit payload {p:?}"),
                    })
                }
            }
        }
        // Every committed file's checksum, before anything parses one: tantivy panics on some
        // damaged files (a flipped fast field) instead of returning an error.
        let damaged = index
            .validate_checksum()
            .map_err(tantivy_err("checking the files"))?;
        if !damaged.is_empty() {
            let mut files: Vec<_> = damaged.into_iter().collect();
            files.sort();
            return Err(open_err(format!(
                "{} file(s) fail their checksum: {files:?}",
                files.len()
            )));
        }
        let writer: IndexWriter = index
            .writer_with_num_threads(1, WRITER_BYTES)
            .map_err(|e| match e {
                TantivyError::LockFailure(..) => TextIndexError::Locked { path: path.clone() },
                other => TextIndexError::Tantivy {
                    path: path.clone(),
                    what: "opening the writer",
                    source: other,
                },
            })?;
        let reader: IndexReader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(tantivy_err("opening a reader"))?;
        Ok(Self {
            path,
            index,
            writer: std::sync::Mutex::new(writer),
            reader,
            fields,
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, IndexWriter> {
        // A panic mid-change leaves at worst uncommitted documents, which the next rollback
        // or commit settles.
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn err(&self, what: &'static str) -> impl FnOnce(TantivyError) -> TextIndexError + '_ {
        move |source| TextIndexError::Tantivy {
            path: self.path.clone(),
            what,
            source,
        }
    }

    /// Adds or replaces the image `id`: its caption (if any) and the words of its file name and
    /// folders. Visible after [`Self::commit`].
    pub fn upsert_image(
        &self,
        id: u64,
        caption: Option<&str>,
        path: &Path,
    ) -> Result<(), TextIndexError> {
        let f = self.fields;
        let key = TextKind::Image.key(id);
        self.writer()
            .delete_term(Term::from_field_text(f.key, &key));
        let mut doc = TantivyDocument::new();
        doc.add_text(f.key, &key);
        doc.add_u64(f.kind, TextKind::Image.code());
        doc.add_u64(f.id, id);
        if let Some(c) = caption {
            doc.add_text(f.caption, c);
        }
        doc.add_text(f.name, words::name_words(path));
        doc.add_text(f.folder, words::folder_words(path));
        self.writer()
            .add_document(doc)
            .map_err(self.err("adding an image"))?;
        Ok(())
    }

    /// Adds or replaces the user text `id`.
    pub fn add_text(&self, id: u64, text: &str) -> Result<(), TextIndexError> {
        let f = self.fields;
        let key = TextKind::Text.key(id);
        self.writer()
            .delete_term(Term::from_field_text(f.key, &key));
        let mut doc = TantivyDocument::new();
        doc.add_text(f.key, &key);
        doc.add_u64(f.kind, TextKind::Text.code());
        doc.add_u64(f.id, id);
        doc.add_text(f.body, text);
        self.writer()
            .add_document(doc)
            .map_err(self.err("adding a text"))?;
        Ok(())
    }

    /// Removes the image `id` (no-op if absent). Effective at the next commit.
    pub fn remove_image(&self, id: u64) {
        let key = TextKind::Image.key(id);
        self.writer()
            .delete_term(Term::from_field_text(self.fields.key, &key));
    }

    /// Removes the user text `id` (no-op if absent). Effective at the next commit.
    pub fn remove_text(&self, id: u64) {
        let key = TextKind::Text.key(id);
        self.writer()
            .delete_term(Term::from_field_text(self.fields.key, &key));
    }

    /// Deletes every document (for a rebuild from the store). Effective at the next commit.
    pub fn clear(&self) -> Result<(), TextIndexError> {
        self.writer()
            .delete_all_documents()
            .map_err(self.err("clearing"))?;
        Ok(())
    }

    /// Drops every change since the last commit.
    pub fn rollback(&self) -> Result<(), TextIndexError> {
        self.writer().rollback().map_err(self.err("rolling back"))?;
        Ok(())
    }

    /// Makes all changes durable (fsynced by tantivy) and visible, recording that the index now
    /// contains store batch `batch_id`.
    pub fn commit(&self, batch_id: u64) -> Result<(), TextIndexError> {
        let payload = serde_json::to_string(&Payload {
            schema: SCHEMA_VERSION,
            batch_id,
        })
        .expect("payload serialises");
        let path = self.path.clone();
        let err = |what| {
            let path = path.clone();
            move |source| TextIndexError::Tantivy { path, what, source }
        };
        // A failed commit (a full disk) leaves tantivy's writer unusable until rolled back to
        // the last commit; the caller re-applies the batches after it (see `Library`).
        let mut writer = self.writer();
        let committed = writer
            .prepare_commit()
            .map_err(err("preparing a commit"))
            .and_then(|mut prepared| {
                prepared.set_payload(&payload);
                prepared.commit().map_err(err("committing"))
            });
        if let Err(e) = committed {
            let _ = writer.rollback();
            return Err(e);
        }
        self.reader.reload().map_err(err("reloading the reader"))?;
        Ok(())
    }

    /// The batch id of the last commit (read from disk, so correct after a reopen); `None` for an
    /// index never committed.
    pub fn committed_batch(&self) -> Result<Option<u64>, TextIndexError> {
        let metas = self
            .index
            .load_metas()
            .map_err(self.err("reading metadata"))?;
        Ok(metas
            .payload
            .and_then(|p| serde_json::from_str::<Payload>(&p).ok())
            .map(|p| p.batch_id))
    }

    /// Number of committed documents (images and texts).
    pub fn num_docs(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// The best `limit` documents of the given kinds (all kinds when `kinds` is empty) for the
    /// user's `query`, best first. Never fails on what the user typed; an empty query matches
    /// nothing.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
        kinds: &[TextKind],
    ) -> Result<Vec<TextHit>, TextIndexError> {
        let Some(mut q) = self.build_query(query)? else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let all = [TextKind::Image, TextKind::Text];
        if !kinds.is_empty() && !all.iter().all(|k| kinds.contains(k)) {
            let kind_clauses = kinds
                .iter()
                .map(|k| {
                    let t = Term::from_field_u64(self.fields.kind, k.code());
                    let q: Box<dyn Query> = Box::new(TermQuery::new(t, IndexRecordOption::Basic));
                    (Occur::Should, q)
                })
                .collect();
            let filter = ConstScoreQuery::new(Box::new(BooleanQuery::new(kind_clauses)), 0.0);
            q = Box::new(BooleanQuery::new(vec![
                (Occur::Must, q),
                (Occur::Must, Box::new(filter) as Box<dyn Query>),
            ]));
        }
        let searcher = self.reader.searcher();
        let top = searcher
            .search(q.as_ref(), &TopDocs::with_limit(limit).order_by_score())
            .map_err(self.err("searching"))?;
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let doc: TantivyDocument = searcher.doc(addr).map_err(self.err("reading a hit"))?;
            let kind = doc.get_first(self.fields.kind).and_then(|v| v.as_u64());
            let id = doc.get_first(self.fields.id).and_then(|v| v.as_u64());
            if let (Some(kind), Some(id)) = (kind.and_then(TextKind::from_code), id) {
                hits.push(TextHit { kind, id, score });
            }
        }
        Ok(hits)
    }

    /// Words and quoted phrases → optional clauses over all fields; `None` when no word remains.
    fn build_query(&self, text: &str) -> Result<Option<Box<dyn Query>>, TextIndexError> {
        let f = self.fields;
        let weighted = [
            (f.caption, 1.0),
            (f.body, 1.0),
            (f.name, 0.8),
            (f.folder, 0.5),
        ];
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
        for (i, segment) in text.split('"').enumerate() {
            // Odd segments were inside quotes (an unbalanced quote runs to the end).
            let phrase = i % 2 == 1;
            for &(field, weight) in &weighted {
                let mut analyzer = self
                    .index
                    .tokenizer_for_field(field)
                    .map_err(self.err("loading the analyzer"))?;
                let mut terms: Vec<(usize, Term)> = Vec::new();
                analyzer.token_stream(segment).process(&mut |t| {
                    terms.push((t.position, Term::from_field_text(field, &t.text)));
                });
                let boost =
                    |q: Box<dyn Query>| -> Box<dyn Query> { Box::new(BoostQuery::new(q, weight)) };
                if !phrase {
                    // Words typed in the order a caption or text has them score once more as a
                    // phrase: a description that says exactly what was asked ("a red circle in
                    // the top") beats one that only shares its words ("a red square and a
                    // circle in the top"). Only within the bounded query length.
                    let sentence_field = field == f.caption || field == f.body;
                    if sentence_field && (2..=MAX_PHRASE_TERMS).contains(&terms.len()) {
                        clauses.push((
                            Occur::Should,
                            boost(Box::new(PhraseQuery::new_with_offset(terms.clone()))),
                        ));
                    }
                    // A word typed twice is one clause (and a pasted essay stays cheap).
                    let mut seen = std::collections::HashSet::new();
                    terms.retain(|(_, t)| seen.insert(t.clone()));
                }
                if phrase && terms.len() > 1 {
                    clauses.push((
                        Occur::Should,
                        boost(Box::new(PhraseQuery::new_with_offset(terms))),
                    ));
                } else {
                    for (_, t) in terms {
                        let tq = TermQuery::new(t, IndexRecordOption::WithFreqs);
                        clauses.push((Occur::Should, boost(Box::new(tq))));
                    }
                }
            }
        }
        if clauses.is_empty() {
            return Ok(None);
        }
        Ok(Some(Box::new(BooleanQuery::new(clauses))))
    }
}
