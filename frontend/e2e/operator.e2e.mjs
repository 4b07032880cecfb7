// Issue 18 in real Chromium against a real stack: API docs with the network blocked, the
// console for every role, a phone-sized screen, an unknown device's page, and the charts.
//
//   E2E_BASE_URL=http://127.0.0.1:8000 E2E_PASSWORD=... E2E_TENANT=acme \
//   E2E_ADMIN=a@acme.test E2E_OPERATOR=o@acme.test E2E_VIEWER=v@acme.test \
//   E2E_DEVICE=some-device node --test e2e/operator.e2e.mjs
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const REQUIRED_ENV = ['E2E_BASE_URL', 'E2E_PASSWORD', 'E2E_TENANT', 'E2E_ADMIN', 'E2E_OPERATOR', 'E2E_VIEWER', 'E2E_DEVICE'];
const missing = REQUIRED_ENV.filter((name) => !process.env[name]);
const CHROMIUM = process.env.E2E_CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run', '--disable-sync'];
const env = process.env;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

if (missing.length > 0) {
  test('e2e environment is configured', () => assert.fail(`Missing environment variable(s): ${missing.join(', ')}`));
} else {
  defineTests();
}

/** A page on which every request that does not go to the stack itself is aborted. */
async function offlinePage(browser, viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(15_000);
  const stack = new URL(env.E2E_BASE_URL);
  const blocked = [];
  await page.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (url.hostname === stack.hostname || url.protocol === 'data:' || url.protocol === 'blob:') return route.continue();
    blocked.push(url.href);
    return route.abort('internetdisconnected');
  });
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  return { page, context, blocked, errors };
}

async function signIn(page, email) {
  await page.goto(env.E2E_BASE_URL + '/');
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(env.E2E_PASSWORD);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Fleet', level: 1 }).waitFor();
}

async function noHorizontalOverflow(page, what) {
  const { scroll, client } = await page.evaluate(() => ({
    scroll: document.documentElement.scrollWidth,
    client: document.documentElement.clientWidth,
  }));
  assert.ok(scroll <= client, `${what}: the page is ${scroll}px wide on a ${client}px screen`);
}

function defineTests() {
  let browser;
  before(async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
  });
  after(async () => browser?.close());

  const only = env.E2E_ONLY;
  const maybe = (name) => (only && only !== name ? test.skip : test);

  maybe('main')('/docs and /redoc render the operations with the network blocked', { timeout: 90_000 }, async () => {
    const { page, context, errors } = await offlinePage(browser);
    try {
      await page.goto(env.E2E_BASE_URL + '/docs');
      await page.locator('.opblock').first().waitFor();
      const operations = await page.locator('.opblock').count();
      assert.ok(operations >= 10, `Swagger UI shows ${operations} operations`);
      await page.getByText('/customer/devices/{device_id}/twin', { exact: true }).first().waitFor();
      await page.goto(env.E2E_BASE_URL + '/redoc');
      await page.getByText('/auth/token').first().waitFor({ timeout: 30_000 });
      assert.deepEqual(errors, []);
    } finally {
      await context.close();
    }
  });

  for (const role of ['admin', 'operator', 'viewer']) {
    maybe('main')(`the console shows a ${role} who they are and only what they may use`, { timeout: 90_000 }, async () => {
      const email = env[`E2E_${role.toUpperCase()}`];
      const { page, context, blocked } = await offlinePage(browser);
      try {
        await signIn(page, email);
        const who = page.getByLabel('Signed in as');
        await who.getByText(role, { exact: true }).waitFor();
        const text = await who.textContent();
        assert.ok(text.includes(email), `header shows the e-mail: ${text}`);
        assert.ok(text.includes(env.E2E_TENANT_NAME ?? env.E2E_TENANT), `header shows the tenant: ${text}`);

        const add = page.getByRole('button', { name: 'Add device' });
        const bulk = page.getByRole('button', { name: 'Set desired for matching devices' });
        await add.waitFor();
        assert.equal(await add.isEnabled(), role === 'admin', 'Add device');
        assert.equal(await bulk.isEnabled(), role !== 'viewer', 'bulk desired');
        if (role !== 'admin') assert.match(await add.getAttribute('title'), /Needs the admin role; you are signed in as /);
        if (role === 'viewer') assert.match(await bulk.getAttribute('title'), /Needs the operator role/);

        await page.goto(`${env.E2E_BASE_URL}/devices/${encodeURIComponent(env.E2E_DEVICE)}`);
        await page.getByRole('heading', { name: 'Twin' }).waitFor();
        await page.getByLabel('Signed in as').getByText(role, { exact: true }).waitFor(); // the role is known
        const remove = page.getByRole('button', { name: 'Delete device' });
        assert.equal(await remove.isEnabled(), role === 'admin', 'Delete device');
        const save = page.getByRole('button', { name: 'Save desired' });
        const patch = page.getByLabel('Desired patch (JSON merge patch)');
        if (role === 'viewer') {
          assert.equal(await save.isDisabled(), true, 'viewer cannot save');
          assert.match(await save.getAttribute('title'), /Needs the operator role/);
          assert.equal(await patch.getAttribute('readonly'), '', 'the editor is read-only');
          assert.equal(await page.getByRole('form', { name: 'Add tag' }).count(), 0, 'no tag form');
        } else {
          await patch.fill('{"e2e_role": "' + role + '"}');
          await save.click();
          await page.getByText(/Saved as desired version/).waitFor();
          assert.equal(await page.getByRole('form', { name: 'Add tag' }).count(), role === 'admin' ? 1 : 0, 'tag form');
        }
        assert.deepEqual(blocked, [], 'the console asks nothing of the outside');
      } finally {
        await context.close();
      }
    });
  }

  maybe('main')('a 375 px screen has no horizontal overflow on the fleet and device pages', { timeout: 60_000 }, async () => {
    const { page, context } = await offlinePage(browser, { width: 375, height: 740 });
    try {
      await signIn(page, env.E2E_ADMIN);
      await page.locator('.device-table').waitFor();
      await noHorizontalOverflow(page, 'fleet page');
      const header = await page.locator('.app-header').boundingBox();
      assert.ok(header && header.width >= 374, `the header stretches: ${header?.width}`);
      await page.goto(`${env.E2E_BASE_URL}/devices/${encodeURIComponent(env.E2E_DEVICE)}`);
      await page.getByRole('heading', { name: 'Twin' }).waitFor();
      await noHorizontalOverflow(page, 'device page');
    } finally {
      await context.close();
    }
  });

  maybe('main')('an unknown device page says so, offers no actions and stops asking', { timeout: 60_000 }, async () => {
    const { page, context } = await offlinePage(browser);
    try {
      await signIn(page, env.E2E_ADMIN);
      const asked = [];
      page.on('request', (request) => {
        if (request.url().includes('/customer/devices/no-such-device')) asked.push(request.url());
      });
      await page.goto(`${env.E2E_BASE_URL}/devices/no-such-device`);
      await page.getByText(/in your tenant: it was never created/).waitFor();
      assert.equal(await page.getByRole('button', { name: 'Delete device' }).count(), 0);
      assert.equal(await page.getByRole('button', { name: 'Save desired' }).count(), 0);
      const settled = asked.length;
      await sleep(7000); // more than two polling intervals
      assert.equal(asked.length, settled, `kept polling: ${asked.slice(settled).join(', ')}`);
    } finally {
      await context.close();
    }
  });

  maybe('main')('models: create, assign, and a breaking change names the device; history shows old → new', { timeout: 90_000 }, async () => {
    const { page, context } = await offlinePage(browser);
    try {
      await signIn(page, env.E2E_ADMIN);
      await page.getByRole('link', { name: 'Models' }).click();
      await page.getByRole('heading', { name: 'Device models', level: 1 }).waitFor();
      await page.getByRole('button', { name: 'New model' }).click();
      const editor = page.getByRole('region', { name: 'New model' });
      await editor.getByLabel('Model id').fill('e2e-lamp');
      await editor.getByLabel('Desired schema (JSON Schema)').fill('{"type": "object", "properties": {"led": {"enum": ["red", "green"]}}');
      await editor.getByText('The desired schema is not valid JSON').waitFor();
      await editor.getByLabel('Desired schema (JSON Schema)').fill('{"type": "object", "properties": {"led": {"enum": ["red", "green"]}}}');
      await editor.getByRole('button', { name: 'Create model' }).click();
      const model = page.getByRole('region', { name: 'Model e2e-lamp', exact: true });
      await model.waitFor();
      const devices = page.getByRole('region', { name: 'Devices of model e2e-lamp' });
      await devices.getByLabel(/Assign to devices/).fill(env.E2E_DEVICE);
      await devices.getByRole('button', { name: 'Assign model' }).click();
      await devices.getByRole('list', { name: 'Assignment results' }).getByText(`${env.E2E_DEVICE}: assigned`).waitFor();

      // Two desired writes: the history shows the second as old → new.
      await page.goto(`${env.E2E_BASE_URL}/devices/${encodeURIComponent(env.E2E_DEVICE)}`);
      const patch = page.getByLabel('Desired patch (JSON merge patch)');
      for (const led of ['red', 'green']) {
        await patch.fill(`{"led": "${led}"}`);
        await page.getByRole('button', { name: 'Save desired' }).click();
        await page.getByText(/Saved as desired version/).waitFor();
      }
      const history = page.getByRole('list', { name: 'Twin history, newest first' });
      await history.getByText('~ led: "red" → "green"').waitFor();
      await page.getByLabel('Kind').selectOption('reported');
      await page.getByText(/No loaded entry matches these filters/).waitFor();
      await page.getByLabel('Kind').selectOption('desired');
      await history.getByText('~ led: "red" → "green"').waitFor();

      // A schema the device's desired state breaks is refused, naming the device.
      await page.getByRole('link', { name: 'Models' }).click();
      await page.getByRole('button', { name: 'e2e-lamp' }).click();
      const again = page.getByRole('region', { name: 'Model e2e-lamp', exact: true });
      await again.getByLabel('Desired schema (JSON Schema)').fill('{"type": "object", "properties": {"led": {"enum": ["blue"]}}}');
      await again.getByRole('button', { name: 'Save schema' }).click();
      const broken = again.getByRole('list', { name: 'Devices that break the schema' });
      await broken.getByRole('link', { name: env.E2E_DEVICE }).waitFor();
    } finally {
      await context.close();
    }
  });

  if (env.E2E_CHARTS === '1') {
    maybe('charts')('the fleet and device charts render with data', { timeout: 60_000 }, async () => {
      const { page, context } = await offlinePage(browser);
      try {
        await signIn(page, env.E2E_ADMIN);
        const fleetChart = page.getByRole('figure', { name: 'Fleet sync status over 24 hours' });
        await fleetChart.locator('canvas').first().waitFor();
        assert.ok((await fleetChart.locator('canvas').count()) >= 1);
        const legend = await fleetChart.textContent();
        for (const series of ['synced', 'pending', 'stale']) assert.ok(legend.includes(series), `legend: ${legend}`);
        assert.ok(Number(await fleetChart.getAttribute('data-points')) >= 2, 'fleet chart has points');

        await page.goto(`${env.E2E_BASE_URL}/devices/${encodeURIComponent(env.E2E_DEVICE)}`);
        const deviceChart = page.getByRole('figure', { name: 'Reported values over time' });
        await deviceChart.locator('canvas').first().waitFor();
        assert.ok(Number(await deviceChart.getAttribute('data-points')) >= 2, 'device chart has points');
        assert.ok((await deviceChart.textContent()).includes('temperature'));
      } finally {
        await context.close();
      }
    });
  }
}
