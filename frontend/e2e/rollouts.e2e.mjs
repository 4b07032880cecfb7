// The rollouts page in real Chromium against a REAL running stack (tests/browser/
// test_rollouts_page.py starts it and the rollouts): stages as live progress bars with counts,
// pause / resume / abort, and a device's rejection as a red badge with its message. The
// devices answer over the real device API (HTTP), one of them refusing the new firmware.
//
// Env: E2E_BASE_URL, E2E_INGEST_URL, E2E_EMAIL, E2E_PASSWORD, E2E_ROLLOUT (the staged one),
// E2E_OTHER_ROLLOUT (one to abort), E2E_DEVICES (comma-separated ids; token = "tok-" + id),
// E2E_REJECTER (the device that refuses fw 2.0), E2E_CHROMIUM.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const env = (name) => {
  const value = process.env[name];
  assert.ok(value, `missing ${name}`);
  return value;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitForText(locator, expected, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    last = ((await locator.textContent({ timeout: 1000 }).catch(() => null)) ?? '').trim();
    if (expected instanceof RegExp ? expected.test(last) : last === expected) return last;
    if (Date.now() > deadline) assert.fail(`${what}: expected ${expected}, still ${JSON.stringify(last)} after ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** Every device reads its desired state and answers it: applies it, or refuses fw 2.0. */
async function devicesAnswer() {
  const ingest = env('E2E_INGEST_URL');
  for (const deviceId of env('E2E_DEVICES').split(',')) {
    const headers = { 'X-Provision-Token': `tok-${deviceId}`, 'Content-Type': 'application/json' };
    const shadow = await (await fetch(`${ingest}/device/v1/shadow`, { headers })).json();
    const refuse = deviceId === env('E2E_REJECTER') && shadow.desired.fw === '2.0';
    const body = refuse
      ? { version: shadow.version, rejected: { code: 'E_FW', message: 'firmware 2.0 does not fit' } }
      : { version: shadow.version, reported: { ...shadow.desired, health: 'ok' } };
    const answer = await fetch(`${ingest}/device/v1/shadow/reported`, { method: 'POST', headers, body: JSON.stringify(body) });
    assert.ok([200, 409].includes(answer.status), `${deviceId}: ${answer.status} ${await answer.text()}`);
  }
}

let browser;
let page;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.E2E_CHROMIUM ?? '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
    headless: true,
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('dialog', (dialog) => void dialog.accept());
});

after(async () => {
  await browser?.close();
});

test('a staged rollout in the console: live stages, pause, resume, abort, rejection badge', async () => {
  const base = env('E2E_BASE_URL');
  const rollout = env('E2E_ROLLOUT');
  await page.goto(`${base}/rollouts/${rollout}`);
  await page.getByLabel('Email', { exact: true }).fill(env('E2E_EMAIL'));
  await page.getByLabel('Password', { exact: true }).fill(env('E2E_PASSWORD'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: /^Rollout / }).waitFor();

  const state = page.getByRole('status', { name: /^Rollout state:/ });
  const stages = page.getByRole('list', { name: 'Stages' }).getByRole('listitem');
  const first = stages.nth(0);
  const second = stages.nth(1);
  await waitForText(first.locator('[data-count="written"]'), '5 / 5', 15_000, 'stage 1 written');
  await waitForText(second.locator('[data-count="written"]'), '0 / 5', 5_000, 'stage 2 waits');
  await waitForText(state, 'running', 5_000, 'state');
  await waitForText(page.locator('[data-stream-state]'), 'Live', 10_000, 'event stream');
  assert.equal(await first.getByRole('progressbar').getAttribute('aria-valuenow'), '5');

  // The devices answer: the page follows live, stage 1 passes and stage 2 is written.
  await devicesAnswer();
  await waitForText(first.locator('[data-count="synced"]'), /^[45]$/, 15_000, 'stage 1 synced');
  await waitForText(second.locator('[data-count="written"]'), '5 / 5', 15_000, 'stage 2 written');
  const rejectedTotal = Number(await first.locator('[data-count="rejected"]').textContent()) + Number(await second.locator('[data-count="rejected"]').textContent());

  await page.getByRole('button', { name: 'Pause' }).click();
  await waitForText(state, 'paused', 5_000, 'paused');
  await page.getByRole('button', { name: 'Resume' }).click();
  await waitForText(state, 'running', 5_000, 'resumed');
  await devicesAnswer();
  await waitForText(state, 'done', 20_000, 'done');
  const rejected =
    Number(await first.locator('[data-count="rejected"]').textContent()) + Number(await second.locator('[data-count="rejected"]').textContent());
  assert.equal(rejected, 1, `one device refused (before the pause: ${rejectedTotal})`);

  // The list shows both; the other one is aborted from its page.
  await page.getByRole('link', { name: '← Rollouts' }).click();
  const other = env('E2E_OTHER_ROLLOUT');
  await page.getByRole('link', { name: other.slice(0, 8) }).click();
  await waitForText(state, 'running', 10_000, 'other rollout');
  await page.getByRole('button', { name: 'Abort' }).click();
  await waitForText(state, 'aborted', 5_000, 'aborted');
  assert.equal(await page.getByRole('button', { name: 'Resume' }).count(), 0);

  // The refusing device: a red "rejected" badge with its message.
  await page.goto(`${base}/devices/${env('E2E_REJECTER')}`);
  const badge = page.getByRole('status', { name: 'Sync status: rejected' });
  await waitForText(badge, /^rejected.*firmware 2\.0 does not fit/, 10_000, 'rejection badge');
  const colour = await badge.evaluate((node) => getComputedStyle(node).color);
  assert.equal(colour, 'rgb(180, 35, 24)', 'the rejected badge is red');
});
