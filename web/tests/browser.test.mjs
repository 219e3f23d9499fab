// Browser test of quarry's web page, run against a live `quarry serve` (see run.sh).
//
// Debian's Chromium, headless, driven by playwright-core (no downloaded browsers); axe-core
// checks the accessibility (WCAG 2 A/AA) of each view. Each step saves a screenshot. The
// page's numbers are checked against the API's own answers, fetched here directly, so the
// test holds for any store and any model.
//
// Environment:
//   QUARRY_URL          base URL of the running server (required), e.g. http://127.0.0.1:8080
//   QUARRY_QUERY        a text query with results in the store, e.g. a caption word (default "circle")
//   QUARRY_DROP_IMAGE   image file dropped for image → text (default: a repository fixture)
//   QUARRY_SCREENSHOTS  folder for the screenshots (default: web/tests/screenshots)
//   CHROMIUM_PATH       the browser (default /usr/bin/chromium)
//   QUARRY_TIMEOUT_MS   how long to wait for one answer from the server (default 60000)
//   QUARRY_LONG_QUERY_CHARS  length of the over-long query for the error check (default 20000)

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.QUARRY_URL || '').replace(/\/+$/, '');
const QUERY = process.env.QUARRY_QUERY || 'circle';
const DROP_IMAGE = path.resolve(process.env.QUARRY_DROP_IMAGE || path.join(HERE, '../../fixtures/retrieval/images/photo.jpg'));
const SHOTS = path.resolve(process.env.QUARRY_SCREENSHOTS || path.join(HERE, 'screenshots'));
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const TIMEOUT = Number(process.env.QUARRY_TIMEOUT_MS || 60000);
const LONG_QUERY_CHARS = Number(process.env.QUARRY_LONG_QUERY_CHARS || 20000);
// The page asks for this many hits per search (PAGE_SIZE in app.js).
const PAGE_SIZE = 24;

const AXE_SOURCE = fs.readFileSync(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');

let browser;
let page;
const pageErrors = [];

/** Saves a screenshot; the whole page, or only the viewport where a modal dialog covers it. */
async function shot(name, { fullPage = true } = {}) {
  // Let the thumbnails near the viewport finish loading (lazy ones further away never start).
  await page.waitForFunction(() => Array.from(document.images).every((img) => {
    const r = img.getBoundingClientRect();
    const near = r.bottom > -1000 && r.top < innerHeight + 1000 && r.width > 0;
    return !near || img.complete;
  }), null, { timeout: 10000 }).catch(() => {});
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

/** Waits until a text search has finished on the page (results, empty state or error). */
async function searchSettled() {
  await page.waitForFunction(() => {
    const results = document.getElementById('results');
    return results.getAttribute('aria-busy') === 'false'
      && (document.querySelectorAll('#grid .card').length > 0
        || document.getElementById('empty-state').children.length > 0
        || !document.getElementById('error').hidden);
  }, null, { timeout: TIMEOUT });
}

/** Cards as the page shows them: id, visibility, raw scores (data-*) and the visible score text. */
function readCards(selector = '#grid .card') {
  return page.$$eval(selector, (cards) => cards.map((c) => ({
    id: c.dataset.id,
    hidden: c.hidden,
    itm: c.dataset.itm === undefined ? null : Number(c.dataset.itm),
    itc: c.dataset.itc === undefined ? null : Number(c.dataset.itc),
    fused: c.dataset.fused === undefined ? null : Number(c.dataset.fused),
    score: c.dataset.score === undefined ? null : Number(c.dataset.score),
    itmLogit: c.dataset.itmLogit === undefined ? null : Number(c.dataset.itmLogit),
    bm25Share: c.dataset.bm25Share === undefined ? null : Number(c.dataset.bm25Share),
    scoresText: c.querySelector('.scores') ? c.querySelector('.scores').textContent : '',
  })));
}

/** Runs axe-core (WCAG 2 A and AA rules) on the page as it is now and asserts no violations. */
async function assertAccessible(label) {
  if (!(await page.evaluate(() => typeof window.axe === 'object'))) await page.addScriptTag({ content: AXE_SOURCE });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'best-practice'] } });
    return result.violations.map((v) => `${v.id} (${v.impact}): ${v.help} at ${v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join(', ')}`);
  });
  assert.deepEqual(violations, [], `${label}: accessibility violations`);
}

const visibleCount = () => page.locator('#grid .card:not([hidden])').count();

async function apiJson(pathAndQuery, init) {
  const res = await fetch(BASE + pathAndQuery, init);
  const body = await res.json();
  return { status: res.status, body };
}

before(async () => {
  assert.ok(BASE, 'set QUARRY_URL to the running server, e.g. QUARRY_URL=http://127.0.0.1:8080 (run.sh does this)');
  assert.ok(fs.existsSync(CHROMIUM), `no browser at ${CHROMIUM}: install Debian's chromium or set CHROMIUM_PATH`);
  assert.ok(fs.existsSync(DROP_IMAGE), `no image to drop at ${DROP_IMAGE}: set QUARRY_DROP_IMAGE`);
  fs.mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-dev-shm-usage'],
  });
  // bypassCSP lets the test inject axe-core; the page itself needs no inline script or style.
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, bypassCSP: true });
  page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (err) => pageErrors.push(err));
});

after(async () => {
  if (browser) await browser.close();
});

test('the page loads with a search box, an empty state and store statistics', async () => {
  const res = await page.goto(`${BASE}/`);
  assert.equal(res.status(), 200, 'GET / answers 200');
  assert.match(await page.title(), /quarry/i);
  const box = page.getByRole('searchbox', { name: /describe the image/i });
  assert.ok(await box.isVisible(), 'the search box is visible and named');
  assert.ok(await box.evaluate((el) => el === document.activeElement), 'the search box has focus on an empty page');
  await page.waitForFunction(() => /\d/.test(document.getElementById('stats-text').textContent)
    && !/Loading/.test(document.getElementById('stats-text').textContent));
  const { body: stats } = await apiJson('/api/v1/stats');
  const footer = await page.locator('#stats-text').textContent();
  assert.ok(footer.includes(`${stats.images.toLocaleString('en')} image`), `the footer shows the image count ${stats.images}: "${footer}"`);
  assert.equal(typeof stats.fusion, 'object', 'GET /stats reports the search fusion');
  assert.equal(typeof stats.fusion.fitted, 'boolean', 'the fusion says whether it is fitted');
  assert.match(footer, stats.fusion.fitted ? /search weights fitted/ : /search weights not fitted/, `the footer says whether the fusion is fitted: "${footer}"`);
  const quality = stats.caption_quality;
  assert.equal(typeof quality, 'object', 'GET /stats reports the caption quality');
  if (quality.uninformative) {
    const expected = `captions are uninformative: ${quality.distinct.toLocaleString('en')} of ${quality.captions.toLocaleString('en')} caption`;
    assert.ok(footer.includes(expected), `the footer warns that the captions are uninformative ("${expected}"): "${footer}"`);
  } else {
    assert.ok(!footer.includes('uninformative'), `the footer raises no caption warning for varied captions: "${footer}"`);
  }
  fusion = stats.fusion;
  assert.ok(await page.locator('#empty-state .welcome').isVisible(), 'an empty page explains what to do');
  await shot('01-start');
  await assertAccessible('the start page');
});

let firstHits;
// GET /api/v1/stats's `fusion`: { bm25_weight (β), itm_logit_weight (w), calibration, caption_source, fitted }.
let fusion;

/** Whether two scores the server computed in f32 agree. */
const near = (a, b) => Math.abs(a - b) <= 1e-4 * Math.max(1, Math.abs(a), Math.abs(b));

test('typing a query and pressing Enter shows ranked results with scores', async () => {
  await page.locator('#q').focus();
  await page.keyboard.type(QUERY);
  await page.keyboard.press('Enter');
  await searchSettled();
  assert.ok(await page.locator('#error').isHidden(), `no error: ${await page.locator('#error').textContent()}`);
  assert.equal(new URL(page.url()).searchParams.get('q'), QUERY, 'the query is in the URL');

  const cards = await readCards();
  assert.ok(cards.length >= 1, `at least one result for "${QUERY}"`);
  for (const c of cards) {
    assert.ok(Number.isFinite(c.itc), `card ${c.id} carries a numeric ITC score`);
    assert.ok(Number.isFinite(c.fused), `card ${c.id} carries a numeric fused score`);
    assert.ok(Number.isFinite(c.score), `card ${c.id} carries a numeric score`);
    assert.ok(Number.isFinite(c.bm25Share) && c.bm25Share >= 0 && c.bm25Share <= 1 + 1e-6, `card ${c.id} carries a BM25 share in [0, 1]: ${c.bm25Share}`);
    assert.match(c.scoresText, /ITC\s+-?\d+\.\d{3}/, `card ${c.id} shows its ITC score: "${c.scoresText}"`);
    assert.ok(c.scoresText.includes(c.itc.toFixed(3)), `card ${c.id} shows the ITC it carries`);
    assert.match(c.scoresText, /fused\s+-?\d+\.\d{4}/, `card ${c.id} shows its fused score`);
    assert.ok(c.scoresText.includes(c.fused.toFixed(4)), `card ${c.id} shows the fused score it carries`);
    // The first stage is ITC + β × the BM25 share.
    assert.ok(near(c.fused, c.itc + fusion.bm25_weight * c.bm25Share), `card ${c.id}: fused ${c.fused} = ITC ${c.itc} + ${fusion.bm25_weight} × ${c.bm25Share}`);
    if (c.itm !== null) {
      assert.ok(c.scoresText.includes(`${(c.itm * 100).toFixed(1)}%`), `card ${c.id} shows its match probability`);
      assert.ok(Number.isFinite(c.itmLogit), `re-ranked card ${c.id} carries its ITM logit`);
      assert.match(c.scoresText, /score\s+-?\d+\.\d{4}/, `re-ranked card ${c.id} shows its score: "${c.scoresText}"`);
      assert.ok(c.scoresText.includes(c.score.toFixed(4)), `re-ranked card ${c.id} shows the score it carries`);
      // A re-ranked hit's score is its first stage plus w × its ITM logit.
      assert.ok(near(c.score, c.fused + fusion.itm_logit_weight * c.itmLogit),
        `card ${c.id}: score ${c.score} = fused ${c.fused} + ${fusion.itm_logit_weight} × ITM logit ${c.itmLogit}`);
    } else {
      assert.equal(c.itmLogit, null, `card ${c.id} without a match probability has no ITM logit`);
      assert.equal(c.score, c.fused, `card ${c.id} that was not re-ranked is ordered by its fused score`);
      assert.doesNotMatch(c.scoresText, /score\s/, `card ${c.id} that was not re-ranked shows no separate score`);
    }
  }

  // The page shows the API's hits in the API's order.
  const { status, body } = await apiJson(`/api/v1/search?${new URLSearchParams({ q: QUERY, k: String(PAGE_SIZE) })}`);
  assert.equal(status, 200);
  assert.deepEqual(cards.map((c) => c.id), body.hits.map((hit) => String(hit.id)), 'cards are the API hits, in order');
  firstHits = body.hits;

  // Best first: re-ranked hits (with ITM) by score (first stage + w × ITM logit), then the rest by
  // fused (first-stage) score; ties by the higher ITC, then the lower id. Scores are f32 in the
  // JSON, so equal scores are equal numbers here and the ties are checked exactly.
  const eps = 1e-6;
  const reranked = cards.filter((c) => c.itm !== null);
  const rest = cards.filter((c) => c.itm === null);
  assert.deepEqual(cards.slice(0, reranked.length), reranked, 're-ranked hits come first');
  const assertOrder = (list, key, what) => {
    for (let i = 1; i < list.length; i += 1) {
      const [a, b] = [list[i - 1], list[i]];
      assert.ok(a[key] >= b[key] - eps, `${what} order at ${i}: ${a[key]} then ${b[key]}`);
      if (a[key] === b[key]) {
        assert.ok(a.itc >= b.itc, `ITC breaks the ${what} tie at ${i}: ${a.itc} then ${b.itc}`);
        if (a.itc === b.itc) assert.ok(Number(a.id) < Number(b.id), `the lower id breaks the ${what} and ITC tie at ${i}`);
      }
    }
  };
  assertOrder(reranked, 'score', 're-ranked score');
  assertOrder(rest, 'fused', 'fused (after the re-ranked hits)');

  await page.waitForFunction(() => /\d+ results? for/.test(document.getElementById('result-status').textContent));
  const status2 = await page.getByRole('status').filter({ hasText: /results? for/ }).textContent();
  assert.ok(status2.includes(String(cards.length)), `the live status announces the count: "${status2}"`);
  await shot('02-results');
  await assertAccessible('the results');
});

test('moving the relevance slider cuts results by match probability, monotonically, down to none', async () => {
  const slider = page.getByRole('slider', { name: /minimum match/i });
  assert.ok(await slider.isEnabled(), 'the slider is enabled: the results carry ITM probabilities');
  const cards = await readCards();
  assert.ok(cards.some((c) => c.itm !== null), 'at least one hit was re-ranked by ITM');

  await slider.focus();
  await page.keyboard.press('Home');
  const max = Number(await slider.getAttribute('max'));
  const seen = [];
  for (;;) {
    const value = Number(await slider.inputValue());
    const shown = await visibleCount();
    const min = value / 100;
    const expected = cards.filter((c) => min <= 0 || (c.itm !== null && c.itm >= min)).length;
    assert.equal(shown, expected, `at ${value}% the page shows exactly the hits with itm >= ${min}`);
    seen.push({ value, shown });
    if (value === 50) {
      await page.waitForFunction(() => new URL(location.href).searchParams.get('min_match') === '0.5');
      await shot('03-slider-50');
    }
    if (value >= max) break;
    await page.keyboard.press('ArrowRight');
    assert.ok(Number(await slider.inputValue()) > value, 'ArrowRight raises the cutoff');
  }
  for (let i = 1; i < seen.length; i += 1) {
    assert.ok(seen[i].shown <= seen[i - 1].shown, `the count never grows: ${JSON.stringify(seen.slice(i - 1, i + 1))}`);
  }
  assert.equal(seen[0].shown, cards.length, 'at 0% every result is shown');
  const saturated = cards.filter((c) => c.itm !== null && c.itm >= 1).length;
  if (saturated === 0) assert.equal(seen[seen.length - 1].shown, 0, 'at 100% no result is left');
  assert.ok(seen[seen.length - 1].shown < seen[0].shown, 'the slider cut some results');
  await page.waitForFunction(() => /below a 100% match/.test(document.getElementById('empty-state').textContent) || document.querySelectorAll('#grid .card:not([hidden])').length > 0);
  await page.waitForFunction(() => /at least 100%/.test(document.getElementById('result-status').textContent));
  await shot('04-slider-top');

  await page.keyboard.press('Home');
  assert.equal(await visibleCount(), cards.length, 'back at 0% everything is shown again');
});

test('the detail dialog opens with the keyboard and explains the ranking', async () => {
  await page.locator('#q').focus();
  let onCard = false;
  for (let i = 0; i < 40 && !onCard; i += 1) {
    await page.keyboard.press('Tab');
    onCard = await page.evaluate(() => document.activeElement.matches('#grid .card-open'));
  }
  assert.ok(onCard, 'Tab reaches the first result card from the search box');
  const cardId = await page.evaluate(() => document.activeElement.closest('.card').dataset.id);
  assert.equal(cardId, String(firstHits[0].id), 'the first card Tab reaches is the best hit');

  const cardCount = await page.locator('#grid .card').count();
  if (cardCount > 1) {
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.evaluate(() => document.activeElement.closest('.card').dataset.id), String(firstHits[1].id), 'ArrowRight moves to the next card');
    await page.keyboard.press('ArrowLeft');
  }

  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog');
  await dialog.waitFor({ state: 'visible' });
  assert.ok(await page.evaluate(() => document.getElementById('detail').contains(document.activeElement)), 'focus moves into the dialog');

  const hit = firstHits[0];
  const s = hit.scores;
  const sentence = await page.locator('#why-sentence').textContent();
  assert.ok(sentence.includes(QUERY), `the explanation names the query: "${sentence}"`);
  assert.match(sentence, /ITC|embedding/, 'the explanation mentions the embedding (ITC) signal');
  assert.match(sentence, /BM25|keyword/, 'the explanation mentions the keyword (BM25) signal');
  assert.match(sentence, /1st/, 'the explanation gives its final position');
  assert.match(sentence, /first-stage score is the ITC similarity plus β × (that|the) BM25 share/, 'the explanation describes the first stage');
  assert.ok(!/reciprocal|RRF/i.test(sentence), `the explanation no longer speaks of reciprocal-rank fusion: "${sentence}"`);
  if (s.itm !== null && s.itm !== undefined) {
    assert.match(sentence, /re-ranked by the ITM/, 'a re-ranked hit says ITM decided its place');
    assert.match(sentence, /score = first stage \+ w × ITM logit/, 'a re-ranked hit gives the formula of its score');
    // The page has the stats, so it gives the numbers: first stage + w × logit = score.
    assert.ok(sentence.includes(`${s.fused.toFixed(4)} + `) && sentence.includes(` × ${s.itm_logit.toFixed(3)} = ${s.score.toFixed(4)}`),
      `a re-ranked hit shows its score's sum: "${sentence}"`);
    assert.match(sentence, /calibrated probability|own probability/, 'a re-ranked hit says what its match probability is');
  } else {
    assert.match(sentence, /first-stage score/, 'a hit that was not re-ranked says the first stage placed it');
  }

  const rows = await page.$$eval('#why-table tbody tr', (trs) => Object.fromEntries(trs.map((tr) => [tr.cells[0].textContent, [tr.cells[1].textContent, tr.cells[2].textContent]])));
  assert.equal(rows['ITC similarity'][0], s.itc.toFixed(4), 'ITC score in the table');
  assert.equal(rows['ITC similarity'][1], s.itc_rank == null ? '—' : `#${s.itc_rank}`, 'ITC rank in the table');
  assert.equal(rows['BM25 keyword score'][0], s.bm25 == null ? '—' : s.bm25.toFixed(3), 'BM25 score in the table');
  assert.equal(rows['BM25 keyword score'][1], s.bm25_rank == null ? '—' : `#${s.bm25_rank}`, 'BM25 rank in the table');
  assert.equal(rows['BM25 share of the best'][0], s.bm25 == null ? '—' : `${(s.bm25_share * 100).toFixed(1)}%`, 'BM25 share in the table');
  assert.ok(!('Fused (RRF)' in rows), 'the table no longer has an RRF row');
  assert.equal(rows['First stage (ITC + β·BM25)'][0], s.fused.toFixed(5), 'first-stage (fused) score in the table');
  assert.equal(rows['ITM match probability'][0], s.itm == null ? '—' : `${(s.itm * 100).toFixed(1)}%`, 'ITM probability in the table');
  if (s.itm_logit == null) assert.ok(!('ITM logit' in rows), 'no ITM logit row for a hit that was not re-ranked');
  else assert.equal(rows['ITM logit'][0], s.itm_logit.toFixed(3), 'ITM logit in the table');
  assert.equal(rows.Score[0], s.score.toFixed(5), 'the score that ordered the hit, in the table');
  assert.equal(rows.Score[1], '#1', 'the best hit has the best relevance rank');
  assert.match(rows['Final position'][1], /^#1 of \d+$/, 'final position in the table');

  const href = await page.locator('#detail-file').getAttribute('href');
  assert.equal(href, hit.file || `/api/v1/images/${hit.id}/file`, 'the original-file link');
  const file = await fetch(BASE + href);
  assert.equal(file.status, 200, 'the original file is served');

  await page.waitForFunction(() => !/Looking/.test(document.getElementById('similar-status').textContent));
  const similar = await readCards('#similar-grid .card');
  for (const c of similar) assert.match(c.scoresText, /similarity\s+-?\d+\.\d{3}/, 'similar images show their similarity');
  assert.ok(similar.every((c) => c.id !== String(hit.id)), 'the image itself is not listed as similar to itself');
  await shot('05-detail', { fullPage: false });
  await assertAccessible('the detail dialog');

  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.evaluate(() => document.activeElement.closest('.card') && document.activeElement.closest('.card').dataset.id), String(hit.id),
    'closing the dialog returns focus to the card that opened it');
});

async function ensureTexts() {
  const { body: stats } = await apiJson('/api/v1/stats');
  if ((stats.captions || 0) + (stats.texts || 0) > 0) return;
  // A store without captions has nothing for image → text yet: add texts through the page.
  await page.locator('#admin summary').click();
  await page.locator('#texts-input').fill(`a picture matching ${QUERY}\na photo for the quarry browser test`);
  await page.locator('#texts-form button').click();
  await page.waitForFunction(() => /Added|Could not/.test(document.getElementById('texts-form-status').textContent));
  assert.match(await page.locator('#texts-form-status').textContent(), /Added 2 texts/);
  await page.locator('#admin summary').click();
}

async function imageResultsSettled() {
  await page.waitForFunction(() => {
    const section = document.getElementById('image-results');
    return !section.hidden && section.getAttribute('aria-busy') === 'false';
  }, null, { timeout: TIMEOUT });
}

async function checkImageResults(label) {
  assert.ok(await page.locator('#texts-error').isHidden(), `${label}: image → text succeeded: ${await page.locator('#texts-error').textContent()}`);
  const texts = await page.$$eval('#text-list .text-hit', (items) => items.map((li) => ({
    text: li.querySelector('.text-body').textContent,
    itc: li.dataset.itc === undefined ? null : Number(li.dataset.itc),
    scores: li.querySelector('.scores').textContent,
  })));
  assert.ok(texts.length >= 1, `${label}: at least one text is returned for the image`);
  for (const t of texts) {
    assert.ok(t.text.length > 0, `${label}: each text is shown`);
    assert.ok(Number.isFinite(t.itc), `${label}: each text carries an ITC score`);
    assert.match(t.scores, /ITC\s+-?\d+\.\d{3}/, `${label}: each text shows its ITC score`);
  }
  assert.ok(await page.locator('#i2i-error').isHidden(), `${label}: image → image succeeded: ${await page.locator('#i2i-error').textContent()}`);
  const images = await readCards('#i2i-grid .card');
  assert.ok(images.length >= 1, `${label}: at least one similar image is returned`);
  for (const c of images) assert.match(c.scoresText, /similarity\s+-?\d+\.\d{3}/, `${label}: similar images show their similarity`);
  return texts;
}

test('dropping an image, or choosing it with the keyboard, returns texts (image → text) and similar images', async () => {
  await ensureTexts();
  const bytes = fs.readFileSync(DROP_IMAGE).toString('base64');
  const name = path.basename(DROP_IMAGE);
  const type = /\.png$/i.test(name) ? 'image/png' : /\.webp$/i.test(name) ? 'image/webp' : 'image/jpeg';
  const textResponse = page.waitForResponse((r) => r.url().includes('/api/v1/image-to-text'));
  await page.evaluate(({ bytes, name, type }) => {
    const raw = Uint8Array.from(atob(bytes), (ch) => ch.charCodeAt(0));
    const dt = new DataTransfer();
    dt.items.add(new File([raw], name, { type }));
    const zone = document.getElementById('dropzone');
    for (const kind of ['dragenter', 'dragover', 'drop']) {
      zone.dispatchEvent(new DragEvent(kind, { bubbles: true, cancelable: true, dataTransfer: dt }));
    }
  }, { bytes, name, type });
  assert.equal((await textResponse).status(), 200, 'POST /api/v1/image-to-text answers 200');
  await imageResultsSettled();
  const dropped = await checkImageResults('drop');
  assert.equal(await page.locator('#query-name').textContent(), name, 'the dropped file is shown as the query');
  await shot('06-drop-image');
  await assertAccessible('the image results');

  // Keyboard and phone users pick the file: Enter on the button opens the file chooser.
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), page.locator('#choose-image').press('Enter')]);
  const again = page.waitForResponse((r) => r.url().includes('/api/v1/image-to-text'));
  await chooser.setFiles(DROP_IMAGE);
  assert.equal((await again).status(), 200, 'the file picker sends the image too');
  await imageResultsSettled();
  const picked = await checkImageResults('file picker');
  assert.deepEqual(picked.map((t) => t.text), dropped.map((t) => t.text), 'the same image gives the same texts either way');
  await shot('07-file-picker');
});

test('a 375×740 phone screen has no horizontal scrolling', async () => {
  await page.setViewportSize({ width: 375, height: 740 });
  const overflow = () => page.evaluate(() => ({
    doc: document.documentElement.scrollWidth,
    body: document.body.scrollWidth,
    view: document.documentElement.clientWidth,
  }));
  await page.goto(`${BASE}/?${new URLSearchParams({ q: QUERY })}`);
  await searchSettled();
  assert.ok(await page.locator('#grid .card').count() >= 1, 'results load from a linked URL');
  let o = await overflow();
  assert.ok(o.doc <= o.view && o.body <= o.view, `results fit the width: ${JSON.stringify(o)}`);
  await shot('08-phone-results', { fullPage: false });

  await page.locator('#filters summary').click();
  o = await overflow();
  assert.ok(o.doc <= o.view, `open filters fit the width: ${JSON.stringify(o)}`);
  await page.locator('#filters summary').click();

  await page.locator('#grid .card-open').first().click();
  await page.getByRole('dialog').waitFor({ state: 'visible' });
  const dialogBox = await page.locator('#detail').boundingBox();
  assert.ok(dialogBox.x >= 0 && dialogBox.x + dialogBox.width <= 375, `the dialog fits the screen: ${JSON.stringify(dialogBox)}`);
  const inner = await page.evaluate(() => {
    const d = document.getElementById('detail');
    return { scroll: d.scrollWidth, client: d.clientWidth };
  });
  assert.ok(inner.scroll <= inner.client, `the dialog's content fits its width: ${JSON.stringify(inner)}`);
  await shot('09-phone-detail', { fullPage: false });
  await page.keyboard.press('Escape');
  await page.setViewportSize({ width: 1280, height: 900 });
});

test('an over-long query shows the API\'s error message, and back returns to the previous results', async () => {
  const long = 'lorem ipsum '.repeat(Math.ceil(LONG_QUERY_CHARS / 12)).slice(0, LONG_QUERY_CHARS).trim();
  const { status, body } = await apiJson('/api/v1/search', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ q: long, k: PAGE_SIZE }),
  });
  assert.ok(status >= 400 && status < 500, `the API refuses a ${long.length}-character query with a 4xx (got ${status})`);
  assert.equal(typeof body.message, 'string', 'the API error has a message');

  await page.locator('#q').fill(long);
  await page.locator('#q').press('Enter');
  await page.locator('#error').waitFor({ state: 'visible' });
  const shown = await page.getByRole('alert').filter({ hasText: body.message }).count();
  assert.equal(shown, 1, `the page shows the API's message "${body.message}"`);
  assert.equal(await page.locator('#grid .card').count(), 0, 'no stale results stay on screen');
  await shot('10-error');

  await page.goBack();
  await searchSettled();
  assert.equal(await page.locator('#q').inputValue(), QUERY, 'back restores the previous query');
  assert.ok(await page.locator('#error').isHidden(), 'back clears the error');
  assert.ok(await page.locator('#grid .card').count() >= 1, 'back shows the previous results');
  await shot('11-back');
});

test('no script errors happened on the page', () => {
  assert.deepEqual(pageErrors.map((e) => e.message), []);
});
