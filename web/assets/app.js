// quarry's web page: text → image search, image → text and image → image by dropping a file,
// a ranking explanation per hit, indexing progress and store statistics.
//
// Plain JavaScript, no framework and no build step: the server embeds these files as they are
// and the page must work offline. It speaks only the JSON API in /api/v1 (see the server's
// /api/v1/openapi.json).
//
// Design choices worth knowing:
// - Everything the API returns (captions, paths, texts, messages) is user data. It reaches the
//   DOM only through textContent / text nodes (see `h`), never through innerHTML, and URLs from
//   the API are used only when they are same-origin paths (see `apiPath`).
// - The relevance slider filters the hits already on screen by their ITM match probability
//   (`scores.itm`) on the client. That is instant, and equivalent to the API's `min_match`
//   (which drops hits whose `itm` is below it): a hit is kept when itm >= cutoff. Hits without
//   an ITM probability (not among the re-ranked top N) are kept only at a cutoff of 0.
// - Sort order and filters (folder prefix, capture dates, file type) are applied by the server,
//   so changing them runs the search again.
// - Relevance order is the server's: the hits ITM re-ranked come first, by `scores.score` (the
//   first-stage score plus w × the ITM logit), then the others by `scores.fused` (the first
//   stage: ITC + β × the BM25 share); ties go to the higher ITC, then the lower id. The weights
//   β and w come from GET /stats (`fusion`), which the page fetches for its explanations.
// - The query, filters, sort, cutoff and result count live in the URL (?q=…), so results can be
//   linked and the browser's back and forward buttons move between searches.
'use strict';

const API = '/api/v1';
const PAGE_SIZE = 24;
const MAX_K = 192;
const TEXT_HITS = 10;
const SIMILAR_HITS = 12;
// Longer GET URLs risk the server's request-line limit; such searches go as POST bodies.
const GET_URL_LIMIT = 2000;
const POLL_MS = 1000;
const TOKEN_KEY = 'quarry.token';
const BROWSER_FORMATS = new Set(['jpeg', 'jpg', 'png', 'webp', 'gif', 'bmp']);
const IMAGE_NAME = /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|heif|avif|jxl|dng|nef|nrw|arw|cr2|pef)$/i;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------
// DOM and formatting helpers

/** Creates an element; string children become text nodes, so API data is never parsed as HTML. */
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** A same-origin API path from the response, or the given fallback if it is anything else. */
function apiPath(value, fallback) {
  return typeof value === 'string' && value.startsWith('/') && !value.startsWith('//') ? value : fallback;
}

const isNum = (v) => typeof v === 'number' && Number.isFinite(v);
const fmt = (v, digits) => (isNum(v) ? v.toFixed(digits) : '—');
const pct = (v) => (isNum(v) ? `${(v * 100).toFixed(1)}%` : '—');
const rankText = (r) => (isNum(r) ? `#${r}` : '—');
const intText = (v) => (isNum(v) ? Math.round(v).toLocaleString('en') : '—');

function fileName(path) {
  if (typeof path !== 'string' || !path) return '(unknown file)';
  const parts = path.split(/[\\/]/);
  return parts[parts.length - 1] || path;
}

function dateText(value) {
  if (typeof value !== 'string' || !value) return null;
  const m = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}))?/.exec(value);
  return m ? (m[2] ? `${m[1]} ${m[2]}` : m[1]) : value;
}

function bytesText(n) {
  if (!isNum(n)) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

function durationText(seconds) {
  if (!isNum(seconds)) return null;
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function ordinal(n) {
  const rem100 = n % 100;
  if (rem100 >= 11 && rem100 <= 13) return `${n}th`;
  return `${n}${({ 1: 'st', 2: 'nd', 3: 'rd' })[n % 10] || 'th'}`;
}

const plural = (n, word, many = `${word}s`) => `${intText(n)} ${n === 1 ? word : many}`;
// A fusion weight (β, w) as short as it stays exact enough to read: 0.05, 1, 0.0734.
const weightText = (v) => (isNum(v) ? String(Number(v.toPrecision(3))) : '—');

// ---------------------------------------------------------------------------------------------
// API access

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function token() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}

/** Calls the API; resolves to parsed JSON or throws ApiError carrying the API's own message. */
async function api(path, { method = 'GET', json, form, signal, auth = false } = {}) {
  const headers = { Accept: 'application/json' };
  let body;
  if (json !== undefined) {
    headers['Content-Type'] = 'application/json';
    body = JSON.stringify(json);
  } else if (form) {
    body = form;
  }
  if (auth && token()) headers.Authorization = `Bearer ${token()}`;
  let res;
  let text;
  try {
    res = await fetch(API + path, { method, headers, body, signal });
    text = await res.text();
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network', 'Could not reach the quarry server. Check that it is running, then try again.');
  }
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    if (data && typeof data.message === 'string') throw new ApiError(res.status, data.error || 'error', data.message);
    throw new ApiError(res.status, 'http', `The server answered ${res.status}${res.statusText ? ` ${res.statusText}` : ''}.`);
  }
  if (data === null || typeof data !== 'object') {
    throw new ApiError(res.status, 'bad_response', 'The server sent an answer that is not JSON.');
  }
  return data;
}

// ---------------------------------------------------------------------------------------------
// Page state: the URL is the source of truth for text searches.

const view = {
  search: null, // { state, data } of the results on screen
  image: null, // { file, url, texts, images } of the last image search
  opener: null, // element focused before the dialog opened
};

function clampInt(value, lo, hi, dflt) {
  const n = Number.parseInt(value, 10);
  return Number.isFinite(n) ? Math.min(hi, Math.max(lo, n)) : dflt;
}

function stateFromUrl() {
  const p = new URLSearchParams(location.search);
  const min = Number.parseFloat(p.get('min_match'));
  return {
    q: p.get('q') || '',
    folder: p.get('folder') || '',
    from: p.get('from') || '',
    to: p.get('to') || '',
    type: p.get('type') || '',
    sort: p.get('sort') === 'date' ? 'date' : 'relevance',
    k: clampInt(p.get('k'), 1, MAX_K, PAGE_SIZE),
    min: Number.isFinite(min) ? Math.min(1, Math.max(0, Math.round(min * 20) / 20)) : 0,
  };
}

function urlFor(s) {
  const p = new URLSearchParams();
  if (s.q) p.set('q', s.q);
  for (const key of ['folder', 'from', 'to', 'type']) if (s[key]) p.set(key, s[key]);
  if (s.sort !== 'relevance') p.set('sort', s.sort);
  if (s.k !== PAGE_SIZE) p.set('k', String(s.k));
  if (s.min > 0) p.set('min_match', String(s.min));
  const qs = p.toString();
  return qs ? `${location.pathname}?${qs}` : location.pathname;
}

function stateFromForm() {
  return {
    q: $('q').value.trim(),
    folder: $('f-folder').value.trim(),
    from: $('f-from').value,
    to: $('f-to').value,
    type: $('f-type').value,
    sort: $('sort').value === 'date' ? 'date' : 'relevance',
    k: PAGE_SIZE,
    min: Number($('min-match').value) / 100,
  };
}

function fillForm(s) {
  $('q').value = s.q;
  $('f-folder').value = s.folder;
  $('f-from').value = s.from;
  $('f-to').value = s.to;
  $('f-type').value = s.type;
  $('sort').value = s.sort;
  $('min-match').value = String(Math.round(s.min * 100));
  updateSliderLabel();
  const active = ['folder', 'from', 'to', 'type'].filter((k) => s[k]).length;
  $('filter-count').hidden = active === 0;
  $('filter-count').textContent = active ? String(active) : '';
  if (active) $('filters').open = true;
}

// ---------------------------------------------------------------------------------------------
// Errors and busy states

function showError(title, err) {
  $('error-title').textContent = title;
  $('error-message').textContent = err instanceof Error ? err.message : String(err);
  $('error').hidden = false;
}

function clearError() {
  $('error').hidden = true;
}

function setBusy(el, busy) {
  el.setAttribute('aria-busy', busy ? 'true' : 'false');
  el.classList.toggle('busy', busy);
}

// ---------------------------------------------------------------------------------------------
// Text → image search

let searchSeq = 0;
let searchAbort = null;

function searchParams(s) {
  const params = { q: s.q, k: s.k };
  for (const key of ['folder', 'from', 'to', 'type']) if (s[key]) params[key] = s[key];
  if (s.sort !== 'relevance') params.sort = s.sort;
  return params;
}

async function runSearch(s) {
  showTextMode();
  clearError();
  document.title = s.q ? `${s.q.slice(0, 80)} — quarry` : 'quarry — image search';
  if (searchAbort) searchAbort.abort();
  if (!s.q) {
    view.search = null;
    $('grid').replaceChildren();
    $('toolbar').hidden = true;
    $('more').hidden = true;
    renderWelcome();
    return;
  }
  if (s.from && s.to && s.from > s.to) {
    view.search = null;
    $('grid').replaceChildren();
    $('toolbar').hidden = true;
    showError('Check the dates:', `“Taken from” (${s.from}) is after “Taken until” (${s.to}).`);
    renderEmpty('Fix the date range to search.', '');
    return;
  }
  const ctrl = new AbortController();
  searchAbort = ctrl;
  const seq = ++searchSeq;
  const results = $('results');
  setBusy(results, true);
  $('toolbar').hidden = false;
  $('result-status').textContent = `Searching for “${s.q}”…`;
  $('empty-state').replaceChildren();
  const params = searchParams(s);
  const qs = new URLSearchParams(params).toString();
  try {
    const data = `${API}/search?${qs}`.length <= GET_URL_LIMIT
      ? await api(`/search?${qs}`, { signal: ctrl.signal })
      : await api('/search', { method: 'POST', json: params, signal: ctrl.signal });
    if (seq !== searchSeq) return;
    if (!Array.isArray(data.hits)) throw new ApiError(200, 'bad_response', 'The search answer has no list of hits.');
    view.search = { state: s, data };
    renderResults();
  } catch (err) {
    if (err.name === 'AbortError' || seq !== searchSeq) return;
    view.search = null;
    $('grid').replaceChildren();
    $('more').hidden = true;
    $('toolbar').hidden = true;
    $('result-status').textContent = '';
    showError('Search failed:', err);
  } finally {
    if (seq === searchSeq) setBusy(results, false);
  }
}

function cutoff() {
  return Number($('min-match').value) / 100;
}

/** Whether a hit passes the relevance cutoff; the same rule as the API's `min_match`. */
function passes(hit, min) {
  if (min <= 0) return true;
  const itm = hit.scores && hit.scores.itm;
  return isNum(itm) && itm >= min;
}

function scoreRow(label, value, title) {
  return h('span', { class: 'score', title }, h('span', { class: 'score-label' }, label), ' ', h('span', { class: 'score-value' }, value));
}

function imageCard(hit, index, extraScores, onOpen) {
  const scores = hit.scores || {};
  const name = fileName(hit.path);
  const thumb = apiPath(hit.thumbnail, `${API}/images/${encodeURIComponent(hit.id)}/thumbnail`);
  const img = h('img', { src: thumb, alt: '', loading: 'lazy', decoding: 'async', width: 256, height: 256 });
  img.addEventListener('error', () => img.closest('.thumb').classList.add('broken'), { once: true });
  const button = h('button', { type: 'button', class: 'card-open' },
    h('span', { class: 'thumb' }, img),
    h('span', { class: 'card-rank' }, `#${index + 1}`),
    h('span', { class: 'caption' + (hit.caption ? '' : ' missing') }, hit.caption || 'No caption'),
    h('span', { class: 'path', title: typeof hit.path === 'string' ? hit.path : '' }, name));
  button.addEventListener('click', () => onOpen(hit, button));
  const li = h('li', { class: 'card', dataset: { id: String(hit.id) } }, button, extraScores(scores));
  return li;
}

// The search's fusion weights from GET /stats ({ bm25_weight, itm_logit_weight, calibration,
// caption_source, fitted }), or null until the statistics have loaded.
let searchFusion = null;

const betaText = () => (searchFusion && isNum(searchFusion.bm25_weight) ? ` (β = ${weightText(searchFusion.bm25_weight)})` : '');
const wText = () => (searchFusion && isNum(searchFusion.itm_logit_weight) ? ` (w = ${weightText(searchFusion.itm_logit_weight)})` : '');

/** Whether the server calibrated the ITM probability, or null when the page does not know. */
function itmCalibrated() {
  const c = searchFusion && searchFusion.calibration;
  if (!c || !isNum(c.scale) || !isNum(c.bias)) return null;
  return !(c.scale === 1 && c.bias === 0);
}

function searchScores(scores) {
  const itm = isNum(scores.itm) ? scores.itm : null;
  const fill = h('span');
  // Through the CSSOM, not a style attribute, so a strict Content-Security-Policy allows it.
  fill.style.width = `${itm === null ? 0 : (itm * 100).toFixed(1)}%`;
  const bar = h('span', { class: 'match-bar', 'aria-hidden': 'true' }, fill);
  return h('p', { class: 'scores' },
    scoreRow('match', pct(itm), 'ITM match probability (image–text matching head, calibrated by the server); the relevance slider cuts on it'),
    bar,
    scoreRow('ITC', fmt(scores.itc, 3), 'ITC: cosine similarity of the query and the closest of the image’s 32 query vectors'),
    scoreRow('BM25', isNum(scores.bm25) ? `${fmt(scores.bm25, 2)} ${rankText(scores.bm25_rank)}` : '—',
      `BM25 keyword score over caption and file name, and its rank${isNum(scores.bm25_share) ? `; ${pct(scores.bm25_share)} of the query’s best BM25` : ''}`),
    scoreRow('fused', fmt(scores.fused, 4), `First-stage score: ITC plus β × the BM25 share (this image’s BM25 over the query’s best, 0 without a word match)${betaText()}`),
    isNum(scores.itm_logit)
      ? scoreRow('score', fmt(scores.score, 4), `What ordered this re-ranked hit: the first-stage score plus w × the ITM logit${wText()}`)
      : null);
}

function renderResults() {
  const { state, data } = view.search;
  const hits = data.hits;
  const grid = $('grid');
  const cards = hits.map((hit, i) => {
    const li = imageCard(hit, i, searchScores, (hit2, button) => openDetail(hit2, button, { kind: 'search', index: i }));
    const s = hit.scores || {};
    // data-itm, data-itc, data-fused, data-score, data-bm25, data-bm25-share, data-itm-logit,
    // data-itc-rank, data-bm25-rank: the raw scores, for tests and user scripts.
    for (const key of ['itm', 'itc', 'fused', 'score', 'bm25', 'bm25_share', 'itm_logit', 'itc_rank', 'bm25_rank']) {
      if (isNum(s[key])) li.dataset[key.replace(/_(.)/g, (_, c) => c.toUpperCase())] = String(s[key]);
    }
    return li;
  });
  grid.replaceChildren(...cards);
  const anyItm = hits.some((hit) => hit.scores && isNum(hit.scores.itm));
  const slider = $('min-match');
  slider.disabled = !anyItm;
  $('min-match-help').textContent = anyItm
    ? 'Hides results whose ITM match probability is below the cutoff.'
    : 'Unavailable: these results were not re-ranked, so they carry no match probability.';
  $('more').hidden = !(hits.length >= state.k && state.k < MAX_K);
  applyCutoff();
}

let statusTimer = null;

function applyCutoff() {
  if (!view.search) return;
  const { state, data } = view.search;
  const hits = data.hits;
  const min = $('min-match').disabled ? 0 : cutoff();
  const cards = $('grid').children;
  let shown = 0;
  hits.forEach((hit, i) => {
    const keep = passes(hit, min);
    cards[i].hidden = !keep;
    if (keep) shown += 1;
  });
  const total = hits.length;
  let text;
  if (total === 0) text = `No results for “${state.q}”`;
  else if (min > 0) text = `${shown} of ${plural(total, 'result')} for “${state.q}” with a match of at least ${Math.round(min * 100)}%`;
  else text = `${plural(total, 'result')} for “${state.q}”`;
  const extra = [];
  if (isNum(data.reranked) && total > 0) extra.push(data.reranked > 0 ? `top ${data.reranked} re-ranked by ITM` : 'not re-ranked');
  if (data.timing_ms && isNum(data.timing_ms.total)) extra.push(`${Math.round(data.timing_ms.total)} ms`);
  if (state.sort === 'date') extra.push('sorted by date taken');
  const status = extra.length ? `${text} (${extra.join(', ')}).` : `${text}.`;
  // The status is a live region: update it once the slider settles, not on every step.
  clearTimeout(statusTimer);
  statusTimer = setTimeout(() => { $('result-status').textContent = status; }, 150);
  $('result-status').dataset.visible = String(shown);
  $('grid').dataset.visible = String(shown);

  if (total === 0) {
    const filtered = ['folder', 'from', 'to', 'type'].some((k) => state[k]);
    renderEmpty(`No images match “${state.q}”.`,
      filtered ? 'Try clearing the filters, or describe the image differently.' : 'Try other words, or drop an image to search by example.');
  } else if (shown === 0) {
    renderEmpty(`All ${plural(total, 'result')} are below a ${Math.round(min * 100)}% match.`, 'Lower the minimum match to see them.',
      h('button', { type: 'button', onclick: () => { $('min-match').value = '0'; onSlider(); $('min-match').focus(); } }, 'Show all results'));
  } else {
    $('empty-state').replaceChildren();
  }
}

function renderEmpty(title, text, action) {
  $('empty-state').replaceChildren(h('div', { class: 'empty-box' }, h('p', { class: 'empty-title' }, title), text ? h('p', null, text) : null, action || null));
}

let welcomeImages = null;

function renderWelcome() {
  $('result-status').textContent = '';
  const count = isNum(welcomeImages) ? welcomeImages : null;
  const lines = [
    h('p', { class: 'empty-title' }, 'Search your images by describing them.'),
    h('p', null, 'Type what you are looking for — objects, colours, places, what is happening — and press Enter. Or drop an image to find texts that describe it and images like it.'),
  ];
  if (count === 0) {
    lines.push(h('p', { class: 'hint' }, 'No images are indexed yet. Open “Index & texts” above to add a folder.'));
  } else if (count !== null) {
    lines.push(h('p', { class: 'hint' }, `${plural(count, 'image')} indexed.`));
  }
  $('empty-state').replaceChildren(h('div', { class: 'empty-box welcome' }, ...lines));
}

function updateSliderLabel() {
  const value = `${$('min-match').value}%`;
  $('min-match-value').textContent = value;
  $('min-match').setAttribute('aria-valuetext', value);
}

let sliderUrlTimer = null;

function onSlider() {
  updateSliderLabel();
  applyCutoff();
  // Keep the cutoff in the URL without adding a history entry per step.
  clearTimeout(sliderUrlTimer);
  sliderUrlTimer = setTimeout(() => {
    if (!view.search) return;
    const s = { ...view.search.state, min: cutoff() };
    view.search.state = s;
    history.replaceState(history.state, '', urlFor(s));
  }, 200);
}

function submitSearch(extra = {}) {
  const s = { ...stateFromForm(), ...extra };
  const url = urlFor(s);
  if (url !== location.pathname + location.search || (history.state && history.state.mode === 'image')) {
    history.pushState({ mode: 'text' }, '', url);
  }
  fillForm(s);
  runSearch(s);
}

// ---------------------------------------------------------------------------------------------
// Detail dialog: metadata, the ranking explanation and similar images.

let detailSeq = 0;

const scoreOf = (hit, key) => (hit.scores && isNum(hit.scores[key]) ? hit.scores[key] : -Infinity);
const byDesc = (a, b, key) => (scoreOf(a, key) === scoreOf(b, key) ? 0 : scoreOf(b, key) - scoreOf(a, key));
const byId = (a, b) => Number(a.id) - Number(b.id) || 0;

/** The server's relevance order: re-ranked hits by score, then the rest by fused; ties by ITC, then id. */
function byRelevance(a, b) {
  const ra = isNum(a.scores && a.scores.itm);
  const rb = isNum(b.scores && b.scores.itm);
  if (ra !== rb) return ra ? -1 : 1;
  return byDesc(a, b, ra ? 'score' : 'fused') || byDesc(a, b, 'itc') || byId(a, b);
}

function explainSearchHit(hit, index) {
  const { state, data } = view.search;
  const hits = data.hits;
  const s = hit.scores || {};
  const rankBy = (list, compare) => list.slice().sort(compare).indexOf(hit) + 1 || null;
  const reranked = isNum(data.reranked) ? data.reranked : hits.filter((x) => x.scores && isNum(x.scores.itm)).length;
  const fusedRank = isNum(s.fused) ? rankBy(hits.filter((x) => x.scores && isNum(x.scores.fused)), (a, b) => byDesc(a, b, 'fused') || byDesc(a, b, 'itc') || byId(a, b)) : null;
  const withItm = hits.filter((x) => x.scores && isNum(x.scores.itm));
  const itmRank = isNum(s.itm) ? rankBy(withItm, (a, b) => byDesc(a, b, 'itm') || byDesc(a, b, 'itc') || byId(a, b)) : null;
  const relevanceRank = rankBy(hits, byRelevance);
  const isReranked = isNum(s.itm);

  const signals = [];
  signals.push(isNum(s.itc_rank)
    ? `the image–text embeddings (ITC) ranked it ${ordinal(s.itc_rank)} with a similarity of ${fmt(s.itc, 3)}`
    : `it was not among the nearest images by embedding (ITC ${fmt(s.itc, 3)})`);
  signals.push(isNum(s.bm25_rank)
    ? `keyword search (BM25) over captions and file names ranked it ${ordinal(s.bm25_rank)}${isNum(s.bm25_share) ? `, with ${pct(s.bm25_share)} of the query’s best BM25 score` : ''}`
    : 'its caption and file name did not match the query words (no BM25 score)');
  const beta = searchFusion && isNum(searchFusion.bm25_weight) ? ` with β = ${weightText(searchFusion.bm25_weight)}${searchFusion.fitted ? '' : ' (the default; not fitted for these captions)'}` : '';
  const share = isNum(s.bm25_rank) ? 'that BM25 share' : 'the BM25 share (0 here)';
  const fusedPart = `Its first-stage score is the ITC similarity plus β × ${share}${beta}: ${fmt(s.fused, 4)}${fusedRank ? `, ${ordinal(fusedRank)} among these results` : ''}`;

  let finalPart;
  if (state.sort === 'date') {
    finalPart = `These results are sorted by date taken, so it is shown ${ordinal(index + 1)}; by relevance it would be ${ordinal(relevanceRank)}, as explained below.`;
  } else if (isReranked) {
    const w = searchFusion && isNum(searchFusion.itm_logit_weight) ? searchFusion.itm_logit_weight : null;
    const formula = w !== null && isNum(s.itm_logit)
      ? `score = first stage + w × ITM logit = ${fmt(s.fused, 4)} + ${weightText(w)} × ${fmt(s.itm_logit, 3)} = ${fmt(s.score, 4)}`
      : `score = first stage + w × ITM logit, where w weighs the ITM head against the first stage; its ITM logit of ${fmt(s.itm_logit, 3)} gives a score of ${fmt(s.score, 4)}`;
    const calibrated = itmCalibrated();
    const itmPlace = itmRank === 1 ? 'the highest here' : `the ${ordinal(itmRank)} highest here`;
    const probability = calibrated === false
      ? `Its match probability, ${pct(s.itm)} (${itmPlace}), is the ITM head's own probability (no calibration is fitted for this model), which the relevance slider cuts on`
      : `Its match probability, ${pct(s.itm)} (${itmPlace}), is the ITM head's calibrated probability, which the relevance slider cuts on`;
    finalPart = `The top ${reranked} first-stage candidates were re-ranked by the ITM head: each one's place comes from ${formula}, which puts it ${ordinal(index + 1)} (ties go to the higher ITC). ${probability}.`;
  } else if (reranked > 0) {
    finalPart = `It was not among the top ${reranked} candidates re-ranked by ITM, so it follows them in order of its first-stage score, at ${ordinal(index + 1)}.`;
  } else {
    finalPart = `Re-ranking was off for this search, so the first-stage score alone puts it ${ordinal(index + 1)}.`;
  }
  const sentence = `For “${state.q}”, ${signals.join(', and ')}. ${fusedPart}. ${finalPart}`;
  const rows = [
    ['ITC similarity', fmt(s.itc, 4), rankText(s.itc_rank)],
    ['BM25 keyword score', fmt(s.bm25, 3), rankText(s.bm25_rank)],
    ['BM25 share of the best', isNum(s.bm25) ? pct(s.bm25_share) : '—', ''],
    ['First stage (ITC + β·BM25)', fmt(s.fused, 5), rankText(fusedRank)],
  ];
  if (isNum(s.itm_logit)) rows.push(['ITM logit', fmt(s.itm_logit, 3), '']);
  rows.push(
    ['ITM match probability', pct(s.itm), rankText(itmRank)],
    ['Score', fmt(s.score, 5), rankText(relevanceRank)],
    [state.sort === 'date' ? 'Position (by date)' : 'Final position', '', `#${index + 1} of ${hits.length}`],
  );
  return { sentence, rows };
}

function explainSimilarHit(hit, origin) {
  const s = hit.scores || {};
  return {
    sentence: `Found by image similarity to ${origin}: the score is ${fmt(s.similarity, 4)}, higher is more alike. Text-search scores do not apply.`,
    rows: [['Image similarity', fmt(s.similarity, 4), '']],
  };
}

function metaRow(dl, term, value) {
  if (value == null || value === '') return;
  dl.append(h('div', null, h('dt', null, term), h('dd', null, String(value))));
}

const KNOWN_META = new Set(['id', 'path', 'caption', 'width', 'height', 'format', 'captured_at', 'thumbnail', 'file', 'scores']);

function fillMeta(hit, extra) {
  const dl = $('detail-meta');
  dl.replaceChildren();
  const all = { ...hit, ...(extra || {}) };
  metaRow(dl, 'File', all.path);
  metaRow(dl, 'Caption', all.caption || 'No caption');
  if (isNum(all.width) && isNum(all.height)) metaRow(dl, 'Size', `${all.width} × ${all.height} px`);
  metaRow(dl, 'Format', typeof all.format === 'string' ? all.format.toUpperCase() : null);
  metaRow(dl, 'Taken', dateText(all.captured_at) || 'Unknown');
  metaRow(dl, 'Id', all.id);
  // Whatever else the metadata route reports (file size, camera, indexing batch, …).
  for (const [key, value] of Object.entries(extra || {})) {
    if (KNOWN_META.has(key) || value == null) continue;
    const label = key.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
    if (typeof value === 'object') {
      const parts = Object.entries(value).filter(([, v]) => v != null && typeof v !== 'object').map(([k, v]) => `${k}: ${v}`);
      if (parts.length) metaRow(dl, label, parts.join(', '));
    } else if (/bytes$|^size$|file_size/.test(key) && isNum(value)) {
      metaRow(dl, label, bytesText(value));
    } else {
      metaRow(dl, label, value);
    }
  }
}

function openDetail(hit, opener, context) {
  const dialog = $('detail');
  const seq = ++detailSeq;
  if (!dialog.open) view.opener = opener || document.activeElement;
  const name = fileName(hit.path);
  $('detail-title').textContent = name;
  const img = $('detail-img');
  const thumb = apiPath(hit.thumbnail, `${API}/images/${encodeURIComponent(hit.id)}/thumbnail`);
  const file = apiPath(hit.file, `${API}/images/${encodeURIComponent(hit.id)}/file`);
  img.src = thumb;
  img.alt = hit.caption ? `Image: ${hit.caption}` : `Image ${name}`;
  if (BROWSER_FORMATS.has(String(hit.format).toLowerCase())) {
    const full = new Image();
    full.onload = () => { if (seq === detailSeq) img.src = file; };
    full.src = file;
  }
  $('detail-caption').textContent = hit.caption || 'No caption';
  $('detail-file').href = file;

  const why = context.kind === 'search' ? explainSearchHit(hit, context.index) : explainSimilarHit(hit, context.origin);
  $('why-sentence').textContent = why.sentence;
  $('why-table').tBodies[0].replaceChildren(...why.rows.map(([a, b, c]) => h('tr', null, h('th', { scope: 'row' }, a), h('td', null, b), h('td', null, c))));

  fillMeta(hit, null);
  api(`/images/${encodeURIComponent(hit.id)}`).then((meta) => { if (seq === detailSeq) fillMeta(hit, meta); }).catch(() => {});

  $('similar-grid').replaceChildren();
  $('similar-status').textContent = 'Looking for similar images…';
  api(`/images/${encodeURIComponent(hit.id)}/similar?k=${SIMILAR_HITS + 1}`).then((data) => {
    if (seq !== detailSeq) return;
    const hits = (Array.isArray(data.hits) ? data.hits : []).filter((x) => String(x.id) !== String(hit.id)).slice(0, SIMILAR_HITS);
    $('similar-grid').replaceChildren(...hits.map((x, i) => imageCard(x, i, similarityScores,
      (h2, button) => openDetail(h2, button, { kind: 'similar', origin: `“${name}”` }))));
    $('similar-status').textContent = hits.length ? `${plural(hits.length, 'similar image')}, most similar first.` : 'No other images are similar enough.';
  }).catch((err) => {
    if (seq === detailSeq) $('similar-status').textContent = `Similar images are unavailable: ${err.message}`;
  });

  if (!dialog.open) dialog.showModal();
  dialog.querySelector('.detail-body').scrollTop = 0;
  dialog.scrollTop = 0;
  $('detail-title').setAttribute('tabindex', '-1');
  $('detail-title').focus();
}

function similarityScores(scores) {
  return h('p', { class: 'scores' }, scoreRow('similarity', fmt(scores.similarity, 3), 'Image similarity as computed by the server'));
}

// ---------------------------------------------------------------------------------------------
// Image → text and image → image

let imageSeq = 0;

function showTextMode() {
  $('results').hidden = false;
  $('image-results').hidden = true;
}

function showImageMode() {
  $('results').hidden = true;
  $('image-results').hidden = false;
}

function looksLikeImage(file) {
  return (file.type && file.type.startsWith('image/')) || IMAGE_NAME.test(file.name || '');
}

async function searchByImage(file) {
  clearError();
  if (!file) return;
  if (!looksLikeImage(file)) {
    showError('Not an image:', `“${file.name}” is not an image file (JPEG, PNG, WebP, GIF, BMP or TIFF).`);
    return;
  }
  const seq = ++imageSeq;
  if (searchAbort) searchAbort.abort();
  if (view.image && view.image.url) URL.revokeObjectURL(view.image.url);
  const url = URL.createObjectURL(file);
  view.image = { file, url, texts: null, images: null };
  if (!history.state || history.state.mode !== 'image') history.pushState({ mode: 'image' }, '', location.pathname);
  $('query-preview').src = url;
  $('query-name').textContent = file.name || 'Pasted image';
  showImageMode();
  renderImageResults();
  $('image-results').focus();

  const send = (path, k) => {
    const form = new FormData();
    form.append('image', file, file.name || 'image');
    return api(`${path}?k=${k}`, { method: 'POST', form });
  };
  const section = $('image-results');
  setBusy(section, true);
  const texts = send('/image-to-text', TEXT_HITS).then((data) => {
    if (seq === imageSeq) view.image.texts = { hits: Array.isArray(data.hits) ? data.hits : [] };
  }, (err) => {
    if (seq === imageSeq) view.image.texts = { error: err };
  }).finally(() => { if (seq === imageSeq) renderImageResults(); });
  const images = send('/image-to-image', PAGE_SIZE).then((data) => {
    if (seq === imageSeq) view.image.images = { hits: Array.isArray(data.hits) ? data.hits : [] };
  }, (err) => {
    if (seq === imageSeq) view.image.images = { error: err };
  }).finally(() => { if (seq === imageSeq) renderImageResults(); });
  await Promise.allSettled([texts, images]);
  if (seq === imageSeq) setBusy(section, false);
}

function textItem(hit, index) {
  const s = hit.scores || {};
  const source = hit.source === 'caption' ? 'caption' : hit.source === 'user' ? 'added text' : String(hit.source || 'text');
  const meta = [
    h('span', { class: 'badge' }, source),
    scoreRow('match', pct(s.itm), 'ITM match probability of this text with your image'),
    scoreRow('ITC', fmt(s.itc, 3), 'ITC similarity of this text with your image'),
  ];
  if (hit.image_id != null) {
    meta.push(h('button', {
      type: 'button',
      class: 'link-button',
      onclick: (ev) => openImageById(hit.image_id, ev.currentTarget),
    }, 'View its image'));
  }
  const li = h('li', { class: 'text-hit', dataset: { id: String(hit.id) } },
    h('span', { class: 'card-rank' }, `#${index + 1}`),
    h('p', { class: 'text-body' }, typeof hit.text === 'string' ? hit.text : ''),
    h('p', { class: 'scores' }, ...meta));
  if (isNum(s.itm)) li.dataset.itm = String(s.itm);
  if (isNum(s.itc)) li.dataset.itc = String(s.itc);
  return li;
}

function renderImageResults() {
  const img = view.image;
  if (!img) return;
  const texts = img.texts;
  $('texts-error').hidden = !(texts && texts.error);
  if (!texts) {
    $('texts-status').textContent = 'Finding texts that describe it…';
    $('text-list').replaceChildren();
  } else if (texts.error) {
    $('texts-status').textContent = '';
    $('texts-error').textContent = `Image → text failed: ${texts.error.message}`;
    $('text-list').replaceChildren();
  } else {
    $('texts-status').textContent = texts.hits.length
      ? `${plural(texts.hits.length, 'text')}, best match first.`
      : 'No texts to compare with yet: index images with captions, or add texts under “Index & texts”.';
    $('text-list').replaceChildren(...texts.hits.map(textItem));
  }
  const images = img.images;
  $('i2i-error').hidden = !(images && images.error);
  if (!images) {
    $('i2i-status').textContent = 'Finding similar images…';
    $('i2i-grid').replaceChildren();
  } else if (images.error) {
    $('i2i-status').textContent = '';
    $('i2i-error').textContent = `Image → image failed: ${images.error.message}`;
    $('i2i-grid').replaceChildren();
  } else {
    $('i2i-status').textContent = images.hits.length ? `${plural(images.hits.length, 'image')}, most similar first.` : 'No indexed image is similar.';
    $('i2i-grid').replaceChildren(...images.hits.map((hit, i) => imageCard(hit, i, similarityScores,
      (h2, button) => openDetail(h2, button, { kind: 'similar', origin: 'your image' }))));
  }
}

async function openImageById(id, opener) {
  try {
    const meta = await api(`/images/${encodeURIComponent(id)}`);
    openDetail({ ...meta, id: meta.id != null ? meta.id : id }, opener, { kind: 'similar', origin: 'your image' });
  } catch (err) {
    showError(`Could not open image ${id}:`, err);
  }
}

function installDrop() {
  let depth = 0;
  const hasFiles = (ev) => ev.dataTransfer && Array.from(ev.dataTransfer.types || []).includes('Files');
  document.addEventListener('dragenter', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    depth += 1;
    document.body.classList.add('dragging');
  });
  document.addEventListener('dragover', (ev) => {
    if (!hasFiles(ev)) return;
    ev.preventDefault();
    ev.dataTransfer.dropEffect = 'copy';
  });
  document.addEventListener('dragleave', () => {
    depth = Math.max(0, depth - 1);
    if (depth === 0) document.body.classList.remove('dragging');
  });
  document.addEventListener('drop', (ev) => {
    ev.preventDefault();
    depth = 0;
    document.body.classList.remove('dragging');
    const files = ev.dataTransfer ? Array.from(ev.dataTransfer.files || []) : [];
    if (files.length === 0) {
      showError('Nothing to search with:', 'drop an image file from your computer (links and text are not supported).');
      return;
    }
    searchByImage(files[0]);
  });
  // Pasting an image (e.g. a screenshot) works like dropping it.
  document.addEventListener('paste', (ev) => {
    const file = Array.from((ev.clipboardData && ev.clipboardData.files) || []).find(looksLikeImage);
    if (file && !(ev.target instanceof HTMLInputElement || ev.target instanceof HTMLTextAreaElement)) {
      ev.preventDefault();
      searchByImage(file);
    }
  });
  $('choose-image').addEventListener('click', () => $('file-input').click());
  $('file-input').addEventListener('change', (ev) => {
    const file = ev.target.files && ev.target.files[0];
    if (file) searchByImage(file);
    ev.target.value = '';
  });
}

// ---------------------------------------------------------------------------------------------
// Indexing jobs, added texts, health and statistics

let pollTimer = null;
let jobSeenRunning = false;
let lastJobNumber = null;
let lastJobState = null;

function renderJob(job) {
  const banner = $('job-banner');
  const running = job.state === 'running';
  const done = isNum(job.done) ? job.done : 0;
  const total = isNum(job.total) ? job.total : 0;
  const failed = isNum(job.failed) ? job.failed : 0;
  let text;
  if (running) {
    const parts = [total > 0 ? `${intText(done)} of ${plural(total, 'image')}` : `${plural(done, 'image')} so far`];
    if (failed) parts.push(`${intText(failed)} failed`);
    if (isNum(job.rate) && job.rate > 0) parts.push(`${job.rate.toFixed(1)} images/s`);
    const eta = durationText(job.eta_s);
    if (eta) parts.push(`about ${eta} left`);
    const what = job.origin === 'watch' ? 'Indexing new photos in watched folders' : 'Indexing';
    text = `${what}: ${parts.join(' · ')}${job.message ? ` — ${job.message}` : ''}`;
  } else if (job.state === 'done') {
    text = `Indexing finished: ${plural(done, 'image')} indexed${failed ? `, ${intText(failed)} failed` : ''}.${job.message ? ` ${job.message}` : ''}`;
  } else if (job.state === 'failed') {
    text = `Indexing failed: ${job.message || 'no reason given'}`;
  } else {
    text = '';
  }
  banner.classList.toggle('failed', job.state === 'failed');
  const show = running || (jobSeenRunning && (job.state === 'done' || job.state === 'failed'));
  banner.hidden = !show;
  $('job-text').textContent = text;
  const progress = $('job-progress');
  progress.hidden = !running && job.state !== 'done';
  if (running && total === 0) progress.removeAttribute('value');
  else {
    progress.max = Math.max(total, 1);
    progress.value = Math.min(done + failed, progress.max);
  }
  $('job-dismiss').hidden = running;
  $('index-form').querySelector('button').disabled = running;
  if (running) $('index-form-status').textContent = text;
  else if (jobSeenRunning) $('index-form-status').textContent = text;
}

async function pollJob() {
  clearTimeout(pollTimer);
  let job;
  try {
    job = await api('/index', { auth: true });
  } catch {
    pollTimer = setTimeout(pollJob, POLL_MS * 5);
    return;
  }
  const previousJob = lastJobNumber;
  const previousState = lastJobState;
  lastJobNumber = job.job;
  lastJobState = job.state;
  if (job.state === 'running') jobSeenRunning = true;
  renderJob(job);
  if (job.state === 'running') {
    pollTimer = setTimeout(pollJob, POLL_MS);
  } else {
    // A job that ran between two polls (a quick watched batch) changed the store too.
    if (previousState === 'running' || (previousJob !== null && job.job !== previousJob)) loadStats();
    // Watched folders (quarry serve --watch) start jobs on their own: keep looking.
    if (Array.isArray(job.watching) && job.watching.length > 0) {
      pollTimer = setTimeout(pollJob, POLL_MS * 5);
    }
  }
}

async function startIndexing(ev) {
  ev.preventDefault();
  const paths = $('index-paths').value.split('\n').map((p) => p.trim()).filter(Boolean);
  const status = $('index-form-status');
  if (paths.length === 0) {
    status.textContent = 'Enter at least one folder.';
    return;
  }
  const button = ev.target.querySelector('button');
  button.disabled = true;
  status.textContent = 'Starting…';
  try {
    const res = await api('/index', { method: 'POST', json: { paths }, auth: true });
    status.textContent = `Indexing job ${res.job != null ? res.job : ''} started.`;
    jobSeenRunning = true;
    pollJob();
  } catch (err) {
    button.disabled = false;
    status.textContent = `Could not start indexing: ${err.message}`;
    if (err.status === 401) $('token').focus();
  }
}

async function addTexts(ev) {
  ev.preventDefault();
  const texts = $('texts-input').value.split('\n').map((t) => t.trim()).filter(Boolean);
  const status = $('texts-form-status');
  if (texts.length === 0) {
    status.textContent = 'Enter at least one text.';
    return;
  }
  const button = ev.target.querySelector('button');
  button.disabled = true;
  status.textContent = 'Adding…';
  try {
    const res = await api('/texts', { method: 'POST', json: { texts }, auth: true });
    const n = Array.isArray(res.ids) ? res.ids.length : texts.length;
    status.textContent = `Added ${plural(n, 'text')}.`;
    $('texts-input').value = '';
    loadStats();
  } catch (err) {
    status.textContent = `Could not add texts: ${err.message}`;
    if (err.status === 401) $('token').focus();
  } finally {
    button.disabled = false;
  }
}

async function loadStats() {
  const footer = $('stats-text');
  try {
    const s = await api('/stats');
    const parts = [
      plural(s.images, 'image'),
      plural(s.vectors, 'vector'),
      plural(s.captions, 'caption'),
      plural(s.texts, 'added text'),
    ];
    if (isNum(s.failed) && s.failed > 0) parts.push(`${intText(s.failed)} failed`);
    if (isNum(s.feature_cache_bytes)) parts.push(`feature cache ${bytesText(s.feature_cache_bytes)}`);
    const model = s.model || {};
    if (model.retrieval) parts.push(`retrieval model ${model.retrieval}`);
    parts.push(model.captioner ? `captioner ${model.captioner}` : 'no captioner');
    if (isNum(s.rerank_default)) parts.push(s.rerank_default > 0 ? `ITM re-ranks the top ${s.rerank_default}` : 'ITM re-ranking off');
    const fusion = s.fusion && typeof s.fusion === 'object' ? s.fusion : null;
    searchFusion = fusion;
    if (fusion) {
      const weights = `β ${weightText(fusion.bm25_weight)}, w ${weightText(fusion.itm_logit_weight)}`;
      const src = typeof fusion.caption_source === 'string' ? fusion.caption_source : '';
      const source = src === 'none' ? 'a store without captions' : src ? `${src} captions` : 'these captions';
      parts.push(fusion.fitted
        ? `search weights fitted for ${source} (${weights})`
        : `search weights not fitted for ${source}: safe defaults (${weights})`);
    }
    const quality = s.caption_quality && typeof s.caption_quality === 'object' ? s.caption_quality : null;
    if (quality && quality.uninformative === true) {
      parts.push(`captions are uninformative: ${intText(quality.distinct)} of ${plural(quality.captions, 'caption')} distinct; search relies on the image embeddings`);
    }
    footer.textContent = parts.join(' · ');
    if (quality && quality.uninformative === true && typeof quality.most_common === 'string') {
      footer.title = `Most common caption (${plural(quality.most_common_count, 'image')}): “${quality.most_common}”`;
    } else {
      footer.removeAttribute('title');
    }
    if (isNum(s.images)) {
      welcomeImages = s.images;
      if (!view.search && $('image-results').hidden && !$('q').value) renderWelcome();
    }
  } catch (err) {
    footer.textContent = `Statistics unavailable: ${err.message}`;
  }
}

async function checkHealth() {
  const banner = $('health-banner');
  try {
    const res = await fetch(`${API}/health`, { headers: { Accept: 'application/json' } });
    let body = null;
    try { body = await res.json(); } catch { body = null; }
    if (res.ok) {
      banner.hidden = true;
      if (body && isNum(body.images)) welcomeImages = body.images;
      return true;
    }
    const why = body && typeof body.message === 'string' ? `: ${body.message.replace(/[.\s]+$/, '')}` : ' (loading the model)';
    banner.textContent = `quarry is starting up${why}. Searches will work in a moment.`;
  } catch {
    banner.textContent = 'Cannot reach the quarry server. Retrying…';
  }
  banner.hidden = false;
  setTimeout(async () => {
    if (!(await checkHealth())) return;
    loadStats();
    // A search that failed while the server was starting is worth running again.
    const s = stateFromUrl();
    if (s.q && !view.search && $('image-results').hidden) {
      fillForm(s);
      runSearch(s);
    }
  }, 2000);
  return false;
}

// ---------------------------------------------------------------------------------------------
// Keyboard: arrow keys move between result cards; "/" focuses the search box.

function installKeyboard() {
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== '/' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement || $('detail').open) return;
    ev.preventDefault();
    $('q').focus();
    $('q').select();
  });
  for (const gridId of ['grid', 'i2i-grid', 'similar-grid']) {
    $(gridId).addEventListener('keydown', (ev) => {
      const keys = ['ArrowLeft', 'ArrowRight', 'ArrowUp', 'ArrowDown', 'Home', 'End'];
      if (!keys.includes(ev.key) || !(ev.target instanceof HTMLElement) || !ev.target.classList.contains('card-open')) return;
      const buttons = Array.from(ev.currentTarget.querySelectorAll('.card:not([hidden]) .card-open'));
      const i = buttons.indexOf(ev.target);
      if (i < 0) return;
      const top = buttons[0].getBoundingClientRect().top;
      const columns = Math.max(1, buttons.filter((b) => Math.abs(b.getBoundingClientRect().top - top) < 2).length);
      const next = {
        ArrowLeft: i - 1, ArrowRight: i + 1, ArrowUp: i - columns, ArrowDown: i + columns, Home: 0, End: buttons.length - 1,
      }[ev.key];
      if (next >= 0 && next < buttons.length) {
        ev.preventDefault();
        buttons[next].focus();
      }
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Start-up

function restoreFromUrl() {
  const s = stateFromUrl();
  fillForm(s);
  if (history.state && history.state.mode === 'image' && view.image) {
    clearError();
    $('query-preview').src = view.image.url;
    $('query-name').textContent = view.image.file.name || 'Image';
    showImageMode();
    renderImageResults();
    return;
  }
  runSearch(s);
}

function init() {
  const tokenInput = $('token');
  tokenInput.value = token();
  tokenInput.addEventListener('input', () => {
    try { sessionStorage.setItem(TOKEN_KEY, tokenInput.value); } catch { /* storage disabled: keep it in the field only */ }
  });

  $('search-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    submitSearch();
  });
  for (const id of ['f-type', 'f-from', 'f-to']) {
    $(id).addEventListener('change', () => { if ($('q').value.trim()) submitSearch(); });
  }
  $('clear-filters').addEventListener('click', () => {
    $('f-folder').value = '';
    $('f-from').value = '';
    $('f-to').value = '';
    $('f-type').value = '';
    if ($('q').value.trim()) submitSearch(); else fillForm(stateFromForm());
  });
  $('sort').addEventListener('change', () => { if ($('q').value.trim()) submitSearch(); });
  $('min-match').addEventListener('input', onSlider);
  $('more').addEventListener('click', () => {
    if (!view.search) return;
    const first = $('grid').children.length;
    const s = { ...view.search.state, k: Math.min(MAX_K, view.search.state.k + PAGE_SIZE) };
    history.replaceState(history.state, '', urlFor(s));
    runSearch(s).then(() => {
      const next = $('grid').children[first];
      const button = next && next.querySelector('.card-open');
      if (button) button.focus();
    });
  });
  $('error-dismiss').addEventListener('click', clearError);
  $('job-dismiss').addEventListener('click', () => { $('job-banner').hidden = true; jobSeenRunning = false; });
  $('index-form').addEventListener('submit', startIndexing);
  $('texts-form').addEventListener('submit', addTexts);
  $('home-link').addEventListener('click', (ev) => {
    ev.preventDefault();
    history.pushState({ mode: 'text' }, '', location.pathname);
    restoreFromUrl();
    $('q').focus();
  });

  const dialog = $('detail');
  dialog.addEventListener('close', () => {
    detailSeq += 1;
    const opener = view.opener;
    view.opener = null;
    if (opener && opener.isConnected) opener.focus();
  });
  // A click on the backdrop (outside the dialog's box) closes it too.
  dialog.addEventListener('click', (ev) => {
    if (ev.target !== dialog) return;
    const r = dialog.getBoundingClientRect();
    const inside = ev.clientX >= r.left && ev.clientX <= r.right && ev.clientY >= r.top && ev.clientY <= r.bottom;
    if (!inside) dialog.close();
  });

  window.addEventListener('popstate', restoreFromUrl);
  installDrop();
  installKeyboard();

  restoreFromUrl();
  checkHealth().then((ok) => { if (ok) loadStats(); });
  pollJob();
  if (!stateFromUrl().q) $('q').focus();
}

init();
