// End-to-end test of the console's Users and Audit pages against a REAL running stack: an
// admin adds a colleague, changes their role, disables and deletes them, is refused the
// demotion of the tenant's last admin, and reads all of it in the audit log.
//
//   E2E_BASE_URL=http://127.0.0.1:8000 E2E_EMAIL=admin@example.com E2E_PASSWORD=... \
//   node --test e2e/admin.e2e.mjs
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.E2E_CHROMIUM ?? '/usr/bin/chromium';
const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'];
const missing = ['E2E_BASE_URL', 'E2E_EMAIL', 'E2E_PASSWORD'].filter((name) => !process.env[name]);

if (missing.length > 0) {
  test('e2e environment is configured', () => assert.fail(`Missing environment variable(s): ${missing.join(', ')}`));
} else {
  defineAdminTest();
}

function defineAdminTest() {
  const baseUrl = process.env.E2E_BASE_URL.replace(/\/+$/, '');
  const admin = process.env.E2E_EMAIL;
  const colleague = `colleague-${Date.now()}@browser.test`;
  const pageProblems = [];
  let browser;
  let page;

  before(async () => {
    assert.ok(existsSync(CHROMIUM), `Chromium not found at ${CHROMIUM}`);
    browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true });
    page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.setDefaultTimeout(10_000);
    page.on('pageerror', (error) => pageProblems.push(`page error: ${error.message}`));
    // A Content-Security-Policy violation is reported as a console error.
    page.on('console', (message) => {
      if (message.type() === 'error' && !/status of (403|409|422)/.test(message.text())) {
        pageProblems.push(`console error: ${message.text()}`);
      }
    });
    page.on('dialog', (dialog) => dialog.accept());
  });

  after(async () => {
    await browser?.close();
  });

  test('an admin manages users and reads the audit log', { timeout: 120_000 }, async (t) => {
    let failed = false;
    const step = async (name, body) => {
      if (failed) return t.test(name, { skip: 'an earlier step failed' });
      return t.test(name, async () => {
        try {
          await body();
        } catch (error) {
          failed = true;
          const shot = join(tmpdir(), `admin-e2e-failure-${Date.now()}.png`);
          await page.screenshot({ path: shot, fullPage: true }).catch(() => undefined);
          error.message += `\nPage: ${page.url()} (screenshot ${shot})\n${pageProblems.join('\n')}`;
          throw error;
        }
      });
    };
    const row = (email) => page.getByRole('row').filter({ has: page.getByRole('cell', { name: email, exact: true }) });

    await step('sign in to a cookie session the page cannot read', async () => {
      await page.goto(baseUrl);
      await page.getByLabel('Email', { exact: true }).fill(admin);
      await page.getByLabel('Password', { exact: true }).fill(process.env.E2E_PASSWORD);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('button', { name: 'Sign out' }).waitFor();
      const cookies = await page.context().cookies();
      const session = cookies.find((cookie) => cookie.name === 'iotcloud_session');
      assert.ok(session, 'a session cookie');
      assert.equal(session.httpOnly, true);
      assert.equal(session.sameSite, 'Strict');
      const visible = await page.evaluate(() => document.cookie + JSON.stringify(localStorage));
      assert.ok(!visible.includes(session.value), 'the session token is out of reach of scripts');
    });

    await step('open the Users page and add a colleague', async () => {
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Users' }).click();
      await page.getByRole('heading', { name: 'Users', level: 1 }).waitFor();
      await row(admin).waitFor();
      const form = page.getByRole('form', { name: 'Add a user' });
      await form.getByLabel('Email').fill(colleague);
      await form.getByLabel('Password').fill('short');
      await form.getByLabel('Role').selectOption('operator');
      await form.getByRole('button', { name: 'Add user' }).click();
      await page.getByRole('alert').filter({ hasText: 'at least' }).waitFor();
      await form.getByLabel('Password').fill('a-long-enough-password');
      await form.getByRole('button', { name: 'Add user' }).click();
      await page.getByRole('status').filter({ hasText: `Added ${colleague}` }).waitFor();
      await row(colleague).waitFor();
      assert.equal(await page.getByLabel(`Role of ${colleague}`).inputValue(), 'operator');
    });

    await step('change the role, disable, and delete the colleague', async () => {
      await page.getByLabel(`Role of ${colleague}`).selectOption('viewer');
      await page.getByRole('status').filter({ hasText: `${colleague} is now viewer` }).waitFor();
      await page.getByRole('button', { name: `Disable ${colleague}` }).click();
      await row(colleague).getByRole('cell', { name: 'disabled', exact: true }).waitFor();
      await page.getByRole('button', { name: `Enable ${colleague}` }).waitFor();
      await page.getByRole('button', { name: `Delete ${colleague}` }).click();
      await page.getByRole('status').filter({ hasText: `Deleted ${colleague}` }).waitFor();
      await row(colleague).waitFor({ state: 'detached' });
    });

    await step('the last admin cannot demote themselves', async () => {
      await page.getByLabel(`Role of ${admin}`).selectOption('viewer');
      await page.getByRole('alert').filter({ hasText: 'last enabled admin' }).waitFor();
      assert.equal(await page.getByLabel(`Role of ${admin}`).inputValue(), 'admin');
    });

    await step('read the changes in the audit log, and filter it', async () => {
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Audit' }).click();
      await page.getByRole('heading', { name: 'Audit log', level: 1 }).waitFor();
      for (const action of ['user.delete', 'user.disable', 'user.set_role', 'user.create', 'auth.sign_in']) {
        await page.getByRole('cell', { name: action, exact: true }).first().waitFor();
      }
      await page.getByLabel('Action').fill('user.');
      await page.getByRole('button', { name: 'Filter' }).click();
      await page.getByRole('cell', { name: 'auth.sign_in', exact: true }).waitFor({ state: 'detached' });
      const actions = await page.locator('tbody tr td:nth-child(3)').allTextContents();
      assert.deepEqual(actions, ['user.delete', 'user.disable', 'user.set_role', 'user.create']);
      const targets = await page.locator('tbody tr td:nth-child(4)').allTextContents();
      assert.ok(targets.every((target) => target === colleague), targets.join(', '));
    });

    await step('change your own password, keep working, and sign in with the new one', async () => {
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Account' }).click();
      const form = page.getByRole('form', { name: 'Change your password' });
      await form.getByLabel('Current password').fill('not-my-password');
      await form.getByLabel('New password').fill('a-brand-new-password');
      await form.getByRole('button', { name: 'Change password' }).click();
      await page.getByRole('alert').filter({ hasText: 'permission' }).waitFor();
      await form.getByLabel('Current password').fill(process.env.E2E_PASSWORD);
      await form.getByLabel('New password').fill('a-brand-new-password');
      await form.getByRole('button', { name: 'Change password' }).click();
      await page.getByRole('status').filter({ hasText: 'Password changed' }).waitFor();
      // The session goes on (a write needs the new CSRF token).
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Users' }).click();
      const addForm = page.getByRole('form', { name: 'Add a user' });
      await addForm.getByLabel('Email').fill(`after-${colleague}`);
      await addForm.getByLabel('Password').fill('a-long-enough-password');
      await addForm.getByRole('button', { name: 'Add user' }).click();
      await page.getByRole('status').filter({ hasText: `Added after-${colleague}` }).waitFor();
      await page.getByRole('button', { name: 'Sign out' }).click();
      await page.getByLabel('Email', { exact: true }).fill(admin);
      await page.getByLabel('Password', { exact: true }).fill('a-brand-new-password');
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.getByRole('button', { name: 'Sign out' }).waitFor();
    });

    await step('no page errors and no Content-Security-Policy violations', async () => {
      assert.deepEqual(pageProblems, []);
    });
  });
}
