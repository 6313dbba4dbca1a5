// Browser test of the web console, driven by a Rust test against a live
// server: `node tests/console/console.test.mjs` from the repository root.
// Inputs come from BATON_* environment variables (see `required` below).

import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const UI_WAIT = 30_000; // the page itself, once its data is there
const SERVER_WAIT = 90_000; // anything that waits on the engine
const WHOLE_RUN = 10 * 60_000;

class Failure extends Error {}

function required(name) {
  const value = process.env[name];
  if (!value) throw new Failure(`environment variable ${name} is not set`);
  return value;
}

// CSS attribute values are quoted with "; keys come from outside.
const attr = (value) => String(value).replace(/\\/g, '\\\\').replace(/"/g, '\\"');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function step(text) {
  console.log(`- ${text}`);
}

// The console's visible error banners, to explain a wait that ran out.
async function shownErrors(page) {
  try {
    const texts = await page.locator('.error:visible').allTextContents();
    const list = texts.map((t) => t.trim()).filter(Boolean);
    return list.length ? ` (the console shows: ${list.join(' | ')})` : '';
  } catch {
    return '';
  }
}

// Polls `probe` until it returns { ok: true }; on timeout fails with what was
// expected and the last thing seen.
async function waitUntil(page, expected, probe, timeout = UI_WAIT, interval = 250) {
  const deadline = Date.now() + timeout;
  let seen = 'nothing yet';
  for (;;) {
    try {
      const result = await probe();
      if (result.ok) return result;
      seen = result.seen;
    } catch (e) {
      if (e instanceof Failure) throw e; // the probe already knows it cannot succeed
      seen = `error: ${e.message.split('\n')[0]}`;
    }
    if (Date.now() > deadline) {
      throw new Failure(`expected ${expected} within ${timeout / 1000} s; found ${seen}${await shownErrors(page)}`);
    }
    await sleep(interval);
  }
}

async function waitVisible(page, selector, expected, timeout = UI_WAIT) {
  await waitUntil(page, expected, async () => {
    const count = await page.locator(selector).count();
    if (!count) return { ok: false, seen: `no element matching ${selector}` };
    const visible = await page.locator(selector).first().isVisible();
    return { ok: visible, seen: `${selector} present but hidden` };
  }, timeout);
}

async function text(page, selector) {
  const loc = page.locator(selector);
  return (await loc.count()) ? (await loc.first().textContent()).trim() : null;
}

async function classesOf(page, selector) {
  const loc = page.locator(selector);
  if (!(await loc.count())) return null;
  return ((await loc.first().getAttribute('class')) || '').split(/\s+/).filter(Boolean);
}

async function waitClasses(page, selector, wanted, timeout = UI_WAIT) {
  await waitUntil(page, `${selector} to have classes ${wanted.join(', ')}`, async () => {
    const classes = await classesOf(page, selector);
    if (!classes) return { ok: false, seen: `no element matching ${selector}` };
    return { ok: wanted.every((c) => classes.includes(c)), seen: `class="${classes.join(' ')}"` };
  }, timeout);
}

async function signIn(page, token, role) {
  await waitVisible(page, '#token', 'the sign-in form (#token)');
  await page.fill('#token', token);
  await page.click('#sign-in');
  await waitUntil(page, `#who to contain "(${role})"`, async () => {
    if (await page.locator('#signin-error:visible').count()) {
      throw new Failure(`expected to sign in as ${role}; the sign-in form says "${await text(page, '#signin-error')}"`);
    }
    const who = await text(page, '#who');
    return { ok: who !== null && who.includes(`(${role})`), seen: who === null ? 'no #who' : `#who = "${who}"` };
  });
}

async function go(page, base, hash) {
  await page.goto(`${base}${hash}`);
}

// The instances page has loaded once #match-count holds a number.
async function matchCount(page, timeout = UI_WAIT) {
  const { count } = await waitUntil(page, '#match-count to state a number', async () => {
    const t = await text(page, '#match-count');
    const m = t && t.match(/(\d+)/);
    const loading = await page.locator('#instance-rows td.empty', { hasText: 'Loading' }).count();
    return { ok: Boolean(m) && !loading, count: m ? Number(m[1]) : null, seen: `#match-count = ${JSON.stringify(t)}` };
  }, timeout);
  return count;
}

// The list is not refreshed by itself: "Apply" reloads it while the server catches up.
async function waitForList(page, expected, probe, timeout = SERVER_WAIT) {
  let lastApply = Date.now();
  return waitUntil(page, expected, async () => {
    await matchCount(page);
    const result = await probe();
    if (!result.ok && Date.now() - lastApply > 3000) {
      lastApply = Date.now();
      await page.click('#filters button[type=submit]');
    }
    return result;
  }, timeout, 500);
}

async function confirmWithReason(page, reason, expectedText) {
  await waitVisible(page, '#confirm', 'the confirmation dialog #confirm to open');
  if (expectedText !== undefined) {
    const said = (await text(page, '#confirm')) || '';
    if (!said.includes(expectedText)) {
      throw new Failure(`expected the confirmation dialog to state "${expectedText}"; it says "${said.replace(/\s+/g, ' ')}"`);
    }
  }
  await page.fill('#confirm-reason', reason);
  await page.click('#confirm-ok');
  await waitUntil(page, 'the confirmation dialog to close', async () => {
    const open = await page.locator('#confirm').evaluate((d) => d.open);
    return { ok: !open, seen: 'it is still open' };
  });
}

async function assertNoActions(page, where) {
  for (const selector of ['button.retry', 'button.skip', '#cancel-instance', '#bulk-retry', '#bulk-cancel']) {
    const count = await page.locator(selector).count();
    if (count) throw new Failure(`a viewer must see no ${selector} on ${where}; found ${count}`);
  }
}

async function run(page, env) {
  const { base, operator, viewer, shots, stuck, holdPrefix, holdCount } = env;
  const stuckId = `order-to-cash/${stuck}`;

  step('1. sign in as operator');
  await page.goto(base);
  await signIn(page, operator, 'operator');

  step('2. overview');
  await waitVisible(page, '#page-overview', 'the overview page (#page-overview)');
  await waitVisible(page, 'tr[data-process="order-to-cash"]', 'an overview row tr[data-process="order-to-cash"]', SERVER_WAIT);
  await page.screenshot({ path: join(shots, 'overview.png') });

  step('3. incidents → instances in incident → stuck instance');
  await page.click('#nav a[href="#/incidents"]');
  const group = 'tr[data-group="order-to-cash/charge"]';
  await waitVisible(page, group, `the incident group row ${group}`, SERVER_WAIT);
  await page.locator(`${group} a[href*="incident=true"]`).first().click();
  await waitVisible(page, '#page-instances', 'the instances page (#page-instances) after following the group link');
  const hash = await page.evaluate(() => location.hash);
  for (const part of ['process=order-to-cash', 'step=charge', 'incident=true']) {
    if (!hash.includes(part)) throw new Failure(`expected the group link to filter by ${part}; the page is at ${hash}`);
  }
  const row = `tr[data-instance="${attr(stuckId)}"]`;
  // The stuck instance may sit on a later page of the list.
  for (let pages = 1; ; pages += 1) {
    await matchCount(page);
    if (await page.locator(row).count()) break;
    const next = page.locator('#next-page');
    if (pages >= 40 || !(await next.count()) || (await next.isDisabled())) {
      const rows = await page.locator('tr[data-instance]').evaluateAll((trs) => trs.map((tr) => tr.dataset.instance));
      throw new Failure(`expected ${row} among the instances in incident at charge; found ${rows.length} rows on page ${pages}${rows.length ? `: ${rows.slice(0, 10).join(', ')}` : ''}`);
    }
    const first = await page.locator('tr[data-instance]').first().getAttribute('data-instance');
    await next.click();
    await waitUntil(page, 'the next page of instances', async () => {
      const now = await page.locator('tr[data-instance]').first().getAttribute('data-instance');
      return { ok: now !== first, seen: `first row still ${first}` };
    });
  }
  await page.locator(`${row} a`).first().click();

  step('4. diagram marks of the stuck instance');
  await waitVisible(page, '#page-instance svg#diagram', 'the instance page with svg#diagram');
  await waitClasses(page, 'g.node[data-node="charge"]', ['current', 'incident']);
  await waitClasses(page, 'g.node[data-node="reserve"]', ['done']);
  await page.screenshot({ path: join(shots, 'instance.png') });

  step('5. retry the incident until the instance completes');
  await waitVisible(page, 'button.retry', 'a retry button (button.retry) for the open incident');
  await page.locator('button.retry').first().click();
  await confirmWithReason(page, 'console test: the payment service is back');
  await waitUntil(page, '#instance-status to read "completed"', async () => {
    const status = await text(page, '#instance-status');
    return { ok: status === 'completed', seen: `#instance-status = ${JSON.stringify(status)}; #action-outcome = ${JSON.stringify(await text(page, '#action-outcome'))}` };
  }, SERVER_WAIT, 500);
  await waitClasses(page, 'g.node[data-node="invoice"]', ['done']);
  const taken = await page.locator('path.edge.taken').count();
  if (taken < 1) throw new Failure('expected at least one path.edge.taken on the completed instance; found none');

  step(`6. bulk-cancel the ${holdCount} held instances`);
  const held = new URLSearchParams({ key_prefix: holdPrefix, step: 'manual-approval', status: 'active' });
  await go(page, base, `#/instances?${held}`);
  await waitVisible(page, '#page-instances', 'the instances page (#page-instances)');
  await waitForList(page, `#match-count to state ${holdCount}`, async () => {
    const count = await matchCount(page);
    return { ok: count === holdCount, seen: `#match-count = ${JSON.stringify(await text(page, '#match-count'))}` };
  });
  await waitVisible(page, '#bulk-cancel', 'the bulk cancel button (#bulk-cancel)');
  await page.click('#bulk-cancel');
  await confirmWithReason(page, 'console test: orders withdrawn', String(holdCount));
  await waitUntil(page, `#job-progress to show "applied ${holdCount} of ${holdCount}" or the job completed`, async () => {
    const progress = ((await text(page, '#job-progress')) || '').replace(/\s+/g, ' ');
    const ok = progress.includes(`applied ${holdCount} of ${holdCount}`) || /\bcompleted\b/.test(progress);
    return { ok, seen: `#job-progress = ${JSON.stringify(progress)}` };
  }, SERVER_WAIT, 500);
  const cancelled = new URLSearchParams({ key_prefix: holdPrefix, status: 'cancelled' });
  await go(page, base, `#/instances?${cancelled}`);
  await waitVisible(page, '#page-instances', 'the instances page (#page-instances)');
  const shown = Math.min(holdCount, 50);
  await waitForList(page, `${shown} cancelled instances with key prefix ${holdPrefix}`, async () => {
    const rows = await page.locator('tr[data-instance]').count();
    return { ok: rows === shown, seen: `${rows} rows, #match-count = ${JSON.stringify(await text(page, '#match-count'))}` };
  });

  step('7. heat map of order-to-cash v1');
  await go(page, base, '#/heatmap/order-to-cash/1');
  const heat = 'g.node[data-node="charge"] text.heat';
  await waitVisible(page, heat, `the heat label ${heat}`, SERVER_WAIT);
  const heatText = await text(page, heat);
  const entered = parseInt(heatText, 10);
  if (!(entered >= 1)) throw new Failure(`expected ${heat} to start with a count ≥ 1; it reads ${JSON.stringify(heatText)}`);

  step('8. a viewer sees no action');
  await page.click('#sign-out');
  await signIn(page, viewer, 'viewer');
  await go(page, base, `#/instance/order-to-cash/${encodeURIComponent(stuck)}`);
  await waitVisible(page, '#page-instance svg#diagram', 'the instance page with svg#diagram (viewer)');
  await waitUntil(page, 'the instance to be loaded (#instance-status)', async () => {
    const status = await text(page, '#instance-status');
    return { ok: status === 'completed', seen: `#instance-status = ${JSON.stringify(status)}` };
  });
  await assertNoActions(page, 'the instance page');
  await go(page, base, '#/instances');
  await waitVisible(page, '#page-instances', 'the instances page (#page-instances, viewer)');
  await matchCount(page);
  await assertNoActions(page, 'the instances page');
}

async function main() {
  let browser = null;
  let page = null;
  let shots = null;
  const browserLog = [];
  const watchdog = setTimeout(() => {
    console.error(`console test failed: did not finish within ${WHOLE_RUN / 60000} minutes`);
    process.exit(1);
  }, WHOLE_RUN);
  try {
    shots = required('BATON_SCREENSHOTS');
    mkdirSync(shots, { recursive: true });
    const env = {
      base: required('BATON_CONSOLE_URL'),
      operator: required('BATON_OPERATOR_TOKEN'),
      viewer: required('BATON_VIEWER_TOKEN'),
      shots,
      stuck: required('BATON_STUCK'),
      holdPrefix: required('BATON_HOLD_PREFIX'),
      holdCount: Number(required('BATON_HOLD_COUNT')),
    };
    if (!Number.isInteger(env.holdCount) || env.holdCount < 1) throw new Failure(`BATON_HOLD_COUNT must be a positive integer, not ${process.env.BATON_HOLD_COUNT}`);
    browser = await chromium.launch({
      executablePath: required('BATON_CHROMIUM'),
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.setDefaultTimeout(UI_WAIT);
    page.on('console', (m) => { if (m.type() === 'error') browserLog.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => browserLog.push(`page error: ${e.message}`));
    await run(page, env);
    console.log('console test passed');
    return 0;
  } catch (e) {
    console.error(`console test failed: ${e instanceof Failure ? e.message : e.stack || e}`);
    if (page) {
      console.error(`  at ${page.url()}`);
      if (shots) {
        try {
          await page.screenshot({ path: join(shots, 'failure.png') });
          console.error(`  screenshot: ${join(shots, 'failure.png')}`);
        } catch (err) {
          console.error(`  no failure screenshot: ${err.message}`);
        }
      }
    }
    for (const line of browserLog.slice(-20)) console.error(`  browser ${line}`);
    return 1;
  } finally {
    if (browser) await browser.close().catch(() => {});
    clearTimeout(watchdog);
  }
}

process.exitCode = await main();
