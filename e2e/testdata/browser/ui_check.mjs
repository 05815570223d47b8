// Loads the Temporal Web UI in headless Chromium and checks that operators
// can find a task and see what it is: the workflow list, searched with a
// search-attribute query and showing the Infra and Priority columns, lists
// the task (and not another infra's); its page's User Metadata tab shows
// the task's summary and its current details. Saves a screenshot of each
// (workflows.png, workflow.png).
//
// The UI (2.55) has no summary column in the list: the summary is on the
// workflow's page, which the check reaches by clicking the list's row.
//
// Run by e2e/webui_test.go (TestWebUIShowsTaskSummaryInBrowser) as
// `node ui_check.mjs`, configured by environment variables:
//   UI_URL        the UI's root, e.g. http://127.0.0.1:8233
//   UI_NAMESPACE  the Temporal namespace (default "default")
//   WORKFLOW_ID   the task's workflow id
//   LIST_QUERY    the list's search query, e.g. Infra="production"
//   EXPECT_ROW    newline-separated texts the task's row must show
//   ABSENT_LIST   text the list must not show (another infra's task), optional
//   EXPECT_PAGE   newline-separated texts the workflow page must show
//   OUT_DIR       where the screenshots go
//   CHROMIUM      the browser, default /usr/bin/chromium
// Exits 0 when every check passed; otherwise prints the first check that
// failed and saves failure.png.
import { chromium } from 'playwright-core';
import path from 'node:path';

const env = (name, def) => {
  const v = process.env[name] ?? def;
  if (v === undefined) throw new Error(`${name} is required`);
  return v;
};
const ui = env('UI_URL').replace(/\/$/, '');
const ns = env('UI_NAMESPACE', 'default');
const id = env('WORKFLOW_ID');
const query = env('LIST_QUERY');
const expectRow = env('EXPECT_ROW').split('\n').filter(Boolean);
const absentList = env('ABSENT_LIST', '');
const expectPage = env('EXPECT_PAGE').split('\n').filter(Boolean);
const outDir = env('OUT_DIR');
const timeout = 45_000;

// waitForText waits until text shows in the page or one of its frames: the
// UI renders summaries and details (Markdown) in iframes.
async function waitForText(page, text) {
  const deadline = Date.now() + timeout;
  for (;;) {
    for (const frame of page.frames()) {
      const loc = frame.getByText(text, { exact: false });
      if ((await loc.count().catch(() => 0)) > 0 && (await loc.first().isVisible().catch(() => false))) return;
    }
    if (Date.now() > deadline) throw new Error(`"${text}" not shown within ${timeout} ms`);
    await page.waitForTimeout(100);
  }
}

// check runs one check; the first failure ends the run (the later ones
// depend on it), after a screenshot of what the page showed.
let page;
const check = async (what, fn) => {
  try {
    await fn();
  } catch (err) {
    console.log(`FAIL: ${what}: ${err.message.split('\n')[0]}`);
    await page?.screenshot({ path: path.join(outDir, 'failure.png') }).catch(() => {});
    throw err;
  }
  console.log(`ok: ${what}`);
};

const browser = await chromium.launch({
  executablePath: env('CHROMIUM', '/usr/bin/chromium'),
  headless: true,
  // --no-sandbox: CI runs as root; and no traffic but to the UI under test.
  args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  // The list's columns, as an operator would pick them (the UI keeps the
  // choice in local storage): the search attributes instead of the run id.
  await page.addInitScript((namespace) => {
    const cols = ['Status', 'Workflow ID', 'Type', 'Infra', 'Priority', 'Start'].map((label) => ({ label }));
    localStorage.setItem('namespace-workflow-table-columns', JSON.stringify({ [namespace]: cols }));
  }, ns);

  let started = Date.now();
  await page.goto(`${ui}/namespaces/${encodeURIComponent(ns)}/workflows?query=${encodeURIComponent(query)}`,
    { waitUntil: 'domcontentloaded', timeout });
  const row = page.locator('tr', { hasText: id });
  await check(`workflow list (${query}) lists ${id}`, () => row.first().waitFor({ state: 'visible', timeout }));
  for (const text of expectRow) {
    await check(`its row shows "${text}"`, () => row.getByText(text, { exact: true }).first().waitFor({ state: 'visible', timeout: 5000 }));
  }
  if (absentList) {
    await check(`the list does not show "${absentList}"`, async () => {
      const n = await page.getByText(absentList, { exact: false }).count();
      if (n !== 0) throw new Error(`shown ${n} times`);
    });
  }
  console.log(`list_ms: ${Date.now() - started}`);
  await page.screenshot({ path: path.join(outDir, 'workflows.png') });

  started = Date.now();
  await check('the row links to the workflow page', async () => {
    await page.getByRole('link', { name: id }).first().click({ timeout });
    await page.waitForURL((u) => u.pathname.includes(`/workflows/${id}/`), { timeout });
  });
  await check('the workflow page has a User Metadata tab', () => page.getByText('User Metadata').first().click({ timeout }));
  for (const text of expectPage) {
    await check(`the workflow page shows "${text}"`, () => waitForText(page, text));
  }
  console.log(`page_ms: ${Date.now() - started}`);
  await page.screenshot({ path: path.join(outDir, 'workflow.png') });
} catch {
  failed = true;
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);
