// The web console and Swagger UI driven in headless Chromium (scripts/contract.sh):
// enter the key, submit SELECT 1 and see it succeed, cancel a long query, and in
// Swagger UI Authorize + Try it out -> 201. Screenshots go to $ARTIFACTS.
import puppeteer from "puppeteer-core";

const base = process.env.SLUICE_URL;
const token = process.env.SLUICE_TOKEN;
const artifacts = process.env.ARTIFACTS;
const long = "SELECT count() FROM system.numbers";

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const fail = async (page, what) => {
  await page.screenshot({ path: `${artifacts}/failure.png`, fullPage: true });
  throw new Error(what);
};
try {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.setDefaultTimeout(30000);

  // The console: the key once, then a query.
  await page.goto(`${base}/ui`);
  await page.waitForSelector("#key", { visible: true });
  await page.type("#key", token);
  await page.click("#login-button");
  await page.waitForSelector("#app:not([hidden])");
  await page.type("#sql", "SELECT 1 AS one");
  await page.click("#submit-button");
  await page.waitForFunction(() => /created|collapsed/.test(document.getElementById("submitted").textContent));
  const id = (await page.$eval("#submitted", (e) => e.textContent)).trim().split(" ").pop();
  await page.waitForSelector(`#recent tr[data-id="${id}"][data-status="SUCCEEDED"] button.download`)
    .catch(() => fail(page, `SELECT 1 (${id}) did not show as SUCCEEDED`));
  await page.screenshot({ path: `${artifacts}/console-succeeded.png`, fullPage: true });

  // A long query, canceled from its row.
  await page.$eval("#sql", (e) => (e.value = ""));
  await page.type("#sql", long);
  const before = await page.$eval("#submitted", (e) => e.textContent);
  await page.click("#submit-button");
  await page.waitForFunction(
    (old) => {
      const now = document.getElementById("submitted").textContent;
      return now !== old && now.includes("created");
    },
    {},
    before,
  );
  const longId = (await page.$eval("#submitted", (e) => e.textContent)).trim().split(" ").pop();
  await page.waitForSelector(`#running tr[data-id="${longId}"][data-status="RUNNING"] button.cancel`)
    .catch(() => fail(page, `the long query (${longId}) did not show as RUNNING`));
  await page.screenshot({ path: `${artifacts}/console-running.png`, fullPage: true });
  await page.click(`#running tr[data-id="${longId}"] button.cancel`);
  await page.waitForSelector(`#recent tr[data-id="${longId}"][data-status="CANCELED"]`)
    .catch(() => fail(page, `the long query (${longId}) did not end CANCELED`));
  await page.screenshot({ path: `${artifacts}/console-canceled.png`, fullPage: true });

  // Swagger UI: Authorize, then Try it out on POST /v1/executions with its example.
  const docs = await browser.newPage();
  await docs.setViewport({ width: 1280, height: 1400 });
  docs.setDefaultTimeout(30000);
  await docs.goto(`${base}/docs/`);
  await docs.waitForSelector(".btn.authorize");
  await docs.click(".btn.authorize");
  await docs.waitForSelector(".modal-ux input");
  await docs.type(".modal-ux input", token);
  await docs.click(".modal-ux .auth-btn-wrapper .authorize");
  await docs.click(".modal-ux .btn-done");
  await docs.click("#operations-executions-submit_execution .opblock-summary");
  await docs.waitForSelector("#operations-executions-submit_execution .try-out__btn");
  await docs.click("#operations-executions-submit_execution .try-out__btn");
  await docs.waitForSelector("#operations-executions-submit_execution .execute");
  await docs.click("#operations-executions-submit_execution .execute");
  await docs.waitForSelector("#operations-executions-submit_execution .live-responses-table .response .response-col_status");
  const status = await docs.$eval(
    "#operations-executions-submit_execution .live-responses-table .response .response-col_status",
    (e) => e.textContent.trim(),
  );
  await docs.screenshot({ path: `${artifacts}/swagger-try-it-out.png`, fullPage: true });
  if (!/^20[01]/.test(status)) await fail(docs, `Swagger's Try it out answered ${status}`);
  console.log(`browser: console submit ${id} SUCCEEDED, ${longId} CANCELED, Swagger Try it out ${status}`);
} finally {
  await browser.close();
}
