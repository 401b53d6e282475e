// Real-browser tests of wsgate's demo page: headless Debian Chromium, driven by playwright-core,
// against the real release binary on 127.0.0.1 with a self-signed certificate made for the run.
//
//   (a) two pages (two browser contexts, so two cookie jars) log in on the demo page and
//       exchange broadcast messages over wss://;
//   (b) a page from another origin (a second, plain-HTTP server on another port) opens the
//       channel with valid credentials and is refused with 403 "origin not allowed" (cross-site
//       WebSocket hijacking), while the same-origin page can open the same URL;
//   (c) the page logs in with POST /login and every WebSocket, first and reconnected (with its
//       Reconnect button and by itself after the server closes the connection), rides the
//       HttpOnly session cookie: no URL carries the password, the server logs `auth=session`
//       with the same session id throughout;
//   (d) a wrong password makes the page say "login failed" at once, and it opens no WebSocket
//       and does not retry;
//   (e) a second tab of a logged-in browser connects with the session cookie, without a second
//       login, and "Log out" in it ends the session in both tabs: the server clears the cookie
//       (POST /logout), and a reloaded page stays signed out;
//   (f) once failed logins reach the throttle, the page says how long to wait (Retry-After);
//   (g) a page opened late shows the earlier messages with their senders (the channel keeps a
//       history; the page asks for the envelope and the last 20);
//   (h) a page whose socket is cut while three messages go by shows exactly those three, in
//       order, once it reconnects (?since=EPOCH:POS).
//
// Usage: node browser/test.mjs  (after `cargo build --release`). Environment: WSGATE_BIN (the
// binary; default $CARGO_TARGET_DIR or ./target, then release/wsgate), CHROMIUM (default
// /usr/bin/chromium). Writes a screenshot to <target>/browser/demo.png. Exits 1 on any failure,
// printing the server's log.

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const target = process.env.CARGO_TARGET_DIR
  ? path.resolve(repo, process.env.CARGO_TARGET_DIR)
  : path.join(repo, 'target');
const bin = process.env.WSGATE_BIN || path.join(target, 'release', 'wsgate');
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
const screenshot = path.join(target, 'browser', 'demo.png');

const STEP_TIMEOUT = 15_000; // any one wait
const WATCHDOG = 150_000; // the whole run
const CHANNEL = '/chat/demo';
const ALICE = { user: 'alice', pass: 'alice-browser-pw' };
const BOB = { user: 'bob', pass: 'bob-browser-pw' };

const log = []; // the server's stderr, line by line
let server = null;
let attacker = null;
let browser = null;
let tmp = null;

function fail(message) {
  throw new Error(message);
}

function check(condition, message) {
  if (!condition) fail(message);
}

/// Polls `predicate` every 50 ms until it returns a truthy value, or fails after `timeout`.
async function waitFor(what, predicate, timeout = STEP_TIMEOUT) {
  const until = Date.now() + timeout;
  for (;;) {
    const value = predicate();
    if (value) return value;
    if (Date.now() > until) fail(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/// The first server log line from index `from` on that matches `re`, waited for.
function waitForLog(what, re, from = 0) {
  return waitFor(`server log: ${what}`, () => log.slice(from).find((l) => re.test(l)));
}

function setUp() {
  check(fs.existsSync(bin), `no wsgate binary at ${bin}: run cargo build --release first`);
  check(fs.existsSync(chromiumPath), `no Chromium at ${chromiumPath}: apt-get install chromium`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'wsgate-browser-'));
  const users = path.join(tmp, 'users');
  for (const { user, pass } of [ALICE, BOB]) {
    const r = spawnSync(bin, ['passwd', users, user], { input: `${pass}\n`, encoding: 'utf8' });
    check(r.status === 0, `wsgate passwd ${user} failed: ${r.stderr}`);
  }
  fs.writeFileSync(
    path.join(tmp, 'wsgate.ini'),
    `[server]
listen = 127.0.0.1:0
workers = 8
[tls]
self_signed = true
[origins]
allow_same_origin = true
[auth]
users_file = users
[demo]
enabled = true
channel = ${CHANNEL}
[channel:/chat/*]
mode = broadcast
history_size = 20
# Small, so the test can make the server close a connection (1009) with one long message.
max_message_size = 1K
max_frame_size = 1K
[role:users]
members = *
subscribe = /chat/*
publish = /chat/*
`,
  );
}

/// Starts wsgate on 127.0.0.1:0 and resolves to its port, read from "listening on ADDR".
function startServer() {
  return new Promise((resolve, reject) => {
    server = spawn(bin, ['serve', '--config', path.join(tmp, 'wsgate.ini')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let partial = '';
    server.stderr.setEncoding('utf8');
    server.stderr.on('data', (chunk) => {
      const lines = (partial + chunk).split('\n');
      partial = lines.pop();
      for (const line of lines) {
        log.push(line);
        const m = /listening on 127\.0\.0\.1:(\d+)/.exec(line);
        if (m) resolve(Number(m[1]));
      }
    });
    server.on('exit', (code, signal) => {
      log.push(`[wsgate exited: code=${code} signal=${signal}]`);
      reject(new Error('wsgate exited before listening'));
    });
    setTimeout(() => reject(new Error('wsgate did not log "listening on" within 20 s')), 20_000);
  });
}

/// A plain-HTTP server on another port: the attacker's site. Its page opens the demo channel
/// with the victim's credentials and records what happened in `window.result`.
function startAttacker(port) {
  const page = `<!doctype html><meta charset="utf-8"><title>attacker</title>
<script>
window.result = null;
const ws = new WebSocket('wss://localhost:${port}${CHANNEL}?user=${ALICE.user}&pass=${ALICE.pass}');
ws.onopen = () => { window.result = 'open'; ws.close(); };
ws.onerror = () => { window.result = window.result || 'error'; };
ws.onclose = (e) => { window.result = window.result || ('closed ' + e.code); };
</script><p>an unrelated site</p>`;
  return new Promise((resolve) => {
    attacker = http.createServer((req, res) => {
      res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', Connection: 'close' });
      res.end(page);
    });
    attacker.listen(0, '127.0.0.1', () => resolve(attacker.address().port));
  });
}

/// A page on the demo site, failing the run on any CSP violation or page error.
async function openDemo(context, url, errors) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT);
  page.on('pageerror', (e) => errors.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content.Security.Policy|Refused to/i.test(m.text())) {
      errors.push(`console: ${m.text()}`);
    }
  });
  const response = await page.goto(url);
  check(response && response.status() === 200, `GET / answered ${response && response.status()}`);
  const h = response.headers();
  check(h['content-type'] === 'text/html; charset=utf-8', `content-type ${h['content-type']}`);
  check(h['cache-control'] === 'no-store', `cache-control ${h['cache-control']}`);
  check(h['x-content-type-options'] === 'nosniff', 'no nosniff');
  check(/default-src 'none'/.test(h['content-security-policy'] || ''), 'no CSP');
  return page;
}

async function login(page, { user, pass }) {
  await page.fill('#user', user);
  await page.fill('#pass', pass);
  await page.click('#login-button');
  await page.waitForSelector('body[data-state="connected"]');
  check((await page.inputValue('#pass')) === '', 'the page kept the password in its field');
}

async function send(page, text) {
  await page.fill('#text', text);
  await page.click('#send-button');
}

/// Waits until `page` shows `text` received from `sender` (the envelope's, as the server
/// authenticated it).
async function received(page, sender, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll('#messages li.in')].some((li) => li.textContent === t),
    `${sender}: ${text}`,
  );
}

async function run() {
  setUp();
  const port = await startServer();
  const attackerPort = await startAttacker(port);
  const site = `https://localhost:${port}/`;
  console.log(`wsgate on ${site}, attacker site on http://localhost:${attackerPort}/`);

  browser = await chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // Playwright adds --headless, --no-sandbox (chromiumSandbox is off) and a fresh temporary
    // --user-data-dir; the rest keeps Chromium off the network it would reach by itself.
    args: [
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--ignore-certificate-errors',
    ],
    timeout: 30_000,
  });
  const errors = [];
  const ctxA = await browser.newContext({ ignoreHTTPSErrors: true });
  const ctxB = await browser.newContext({ ignoreHTTPSErrors: true });

  // (a) two pages exchange broadcast messages through the server.
  const a = await openDemo(ctxA, site, errors);
  const b = await openDemo(ctxB, site, errors);
  const socketsA = [];
  a.on('websocket', (ws) => socketsA.push(ws.url()));
  const before = log.length;
  await login(a, ALICE);
  await login(b, BOB);
  await send(a, 'hello from alice');
  await received(b, 'alice', 'hello from alice');
  await send(b, 'hello from bob');
  await received(a, 'bob', 'hello from bob');
  console.log('ok (a) two pages exchanged broadcast messages over wss://');

  // (c) the session cookie: reconnect without the password, same session id.
  await waitForLog('alice logs in', /demo login peer=\S+ user="alice" status=204/, before);
  const opened = await waitForLog(
    'alice opens with the session of her login',
    new RegExp(`open peer=\\S+ user="alice" auth=session session=(\\S+) path=${CHANNEL}`),
    before,
  );
  check(!socketsA[0].includes('pass='), `the first WebSocket URL carried a password`);
  const session = /session=(\S+)/.exec(opened)[1];
  const cookies = await ctxA.cookies(site);
  const cookie = cookies.find((c) => c.name === '__Host-wsgate_session');
  check(cookie, 'no __Host-wsgate_session cookie in the browser');
  check(cookie.httpOnly && cookie.secure && cookie.sameSite === 'Strict', 'cookie flags');
  const beforeResume = log.length;
  await a.click('#reconnect');
  await a.waitForSelector('body[data-state="connected"]');
  check((await a.textContent('#who')).includes('session cookie'), 'page did not resume');
  const resumed = await waitForLog(
    'alice resumes with the session cookie',
    new RegExp(`open peer=\\S+ user="alice" auth=session session=${session} path=${CHANNEL}`),
    beforeResume,
  );
  check(!socketsA.at(-1).includes('pass='), `reconnect URL carried a password`);
  check(socketsA.length === 2, `expected 2 sockets from page A, saw ${socketsA.length}`);
  // The resumed connection still works both ways.
  await send(b, 'after the reconnect');
  await received(a, 'bob', 'after the reconnect');
  await send(a, 'alice is back');
  await received(b, 'alice', 'alice is back');
  // The server closes the connection (a message over max_message_size: 1009); the page
  // reconnects by itself, again with the cookie.
  const beforeClose = log.length;
  await send(a, 'x'.repeat(1500));
  await waitForLog(
    'the server closes alice for a long message',
    /close peer=\S+ user="alice" .* code=1009/,
    beforeClose,
  );
  await waitForLog(
    'alice resumes by herself',
    new RegExp(`open peer=\\S+ user="alice" auth=session session=${session} path=${CHANNEL}`),
    beforeClose,
  );
  await a.waitForSelector('body[data-state="connected"]');
  check(!socketsA.at(-1).includes('pass='), `automatic reconnect URL carried a password`);
  check(socketsA.length === 3, `expected 3 sockets from page A, saw ${socketsA.length}`);
  await send(b, 'after the automatic reconnect');
  await received(a, 'bob', 'after the automatic reconnect');
  console.log(
    `ok (c) reconnected without a password (button, then by itself after a 1009): ${resumed.replace(/peer=\S+ /, '')}`,
  );

  // (b) a page from another origin is refused, with valid credentials, even in the context
  // that holds alice's session cookie; the same-origin page opens the same URL.
  const evil = await ctxA.newPage();
  evil.setDefaultTimeout(STEP_TIMEOUT);
  const beforeAttack = log.length;
  await evil.goto(`http://localhost:${attackerPort}/`);
  const result = await evil.waitForFunction(() => window.result).then((h) => h.jsonValue());
  check(result !== 'open', 'the cross-origin page opened a WebSocket');
  const refused = await waitForLog(
    'the cross-origin upgrade refused',
    /refused peer=\S+ status=403 reason=origin not allowed/,
    beforeAttack,
  );
  check(
    !log.slice(beforeAttack).some((l) => /^.*open peer=.*user="alice"/.test(l)),
    'the attack opened a connection',
  );
  const sameOrigin = await a.evaluate(
    ({ url }) =>
      new Promise((resolve) => {
        const ws = new WebSocket(url);
        ws.onopen = () => {
          resolve('open');
          ws.close();
        };
        ws.onclose = (e) => resolve(`closed ${e.code}`);
      }),
    { url: `wss://localhost:${port}${CHANNEL}?user=${ALICE.user}&pass=${ALICE.pass}` },
  );
  check(sameOrigin === 'open', `the same-origin page could not open the URL: ${sameOrigin}`);
  console.log(`ok (b) cross-origin page refused (${result}): ${refused.replace(/peer=\S+ /, '')}`);

  // (d) a wrong password: "login failed" at once, no WebSocket, no retry loop.
  const ctxC = await browser.newContext({ ignoreHTTPSErrors: true });
  const c = await openDemo(ctxC, site, errors);
  const socketsC = [];
  c.on('websocket', (ws) => socketsC.push(ws.url()));
  const beforeFailed = log.length;
  await c.fill('#user', ALICE.user);
  await c.fill('#pass', 'not-alices-password');
  await c.click('#login-button');
  await c.waitForSelector('body[data-state="login failed: wrong user name or password"]');
  await waitForLog('the failed login', /auth failed: user="alice" peer=\S+/, beforeFailed);
  await new Promise((r) => setTimeout(r, 2500)); // longer than the page's first retry delay
  check(socketsC.length === 0, `a failed login opened ${socketsC.length} WebSockets`);
  check(
    (await c.getAttribute('body', 'data-state')) === 'login failed: wrong user name or password',
    'the page left its login-failed state',
  );
  console.log('ok (d) a wrong password says "login failed" and opens no WebSocket');

  // (e) a second tab in alice's browser: connected by the cookie alone, no second login.
  const beforeTab = log.length;
  const a2 = await openDemo(ctxA, site, errors);
  await a2.waitForSelector('body[data-state="connected"]');
  check((await a2.textContent('#who')).includes('as alice'), 'the second tab does not say who');
  await waitForLog(
    'the second tab opens with alice\'s session cookie',
    new RegExp(`open peer=\\S+ user="alice" auth=session session=\\S+ path=${CHANNEL}`),
    beforeTab,
  );
  check(
    !log.slice(beforeTab).some((l) => /demo login/.test(l)),
    'the second tab logged in again',
  );
  await send(b, 'to both of alice\'s tabs');
  await received(a2, 'bob', 'to both of alice\'s tabs');
  // Log out in the second tab: both tabs sign out, the cookie is gone, a reload stays out.
  await a2.click('#logout');
  await a2.waitForSelector('body[data-state="signed out"]');
  await a.waitForSelector('body[data-state="signed out"]');
  await waitForLog('the log-out', /demo logout peer=\S+ status=204/, beforeTab);
  const left = (await ctxA.cookies(site)).find((c) => c.name === '__Host-wsgate_session');
  check(!left, 'the session cookie survived the log-out');
  const socketsA2 = [];
  a2.on('websocket', (ws) => socketsA2.push(ws.url()));
  await a2.reload();
  await a2.waitForSelector('body[data-state="signed out"]');
  check(socketsA2.length === 0, 'the page opened a WebSocket after the log-out');
  console.log('ok (e) a second tab rode the cookie without a login; log-out ended both tabs');

  // (g) a third browser opened late shows the earlier messages with their senders (the
  // channel keeps a history; the page asks for the last 20).
  const ctxD = await browser.newContext({ ignoreHTTPSErrors: true });
  const d = await openDemo(ctxD, site, errors);
  const socketsD = [];
  d.on('websocket', (ws) => socketsD.push(ws.url()));
  await login(d, BOB);
  await received(d, 'alice', 'hello from alice');
  await received(d, 'bob', 'hello from bob');
  await received(d, 'bob', 'to both of alice\'s tabs');
  console.log('ok (g) a page opened late shows the earlier messages with their senders');

  // (h) a page whose socket is cut misses three messages, and shows them once it reconnects.
  const ctxE = await browser.newContext({ ignoreHTTPSErrors: true });
  const witness = await openDemo(ctxE, site, errors);
  await login(witness, BOB);
  await d.evaluate(() => {
    ws.onclose = null;
    ws.close();
  });
  for (const n of [1, 2, 3]) await send(b, `missed ${n}`);
  await received(witness, 'bob', 'missed 3');
  await d.click('#reconnect');
  await d.waitForSelector('body[data-state="connected"]');
  check(socketsD.at(-1).includes('?since='), `the reconnect did not ask to recover: ${socketsD.at(-1)}`);
  for (const n of [1, 2, 3]) await received(d, 'bob', `missed ${n}`);
  const shown = await d.$$eval('#messages li.in', (lis) => lis.map((li) => li.textContent));
  const missed = shown.filter((t) => t.startsWith('bob: missed '));
  check(
    missed.join('|') === 'bob: missed 1|bob: missed 2|bob: missed 3',
    `recovered out of order or twice: ${missed.join(' | ')}`,
  );
  console.log('ok (h) a page cut off and restored shows exactly what it missed, in order');

  // (f) wrong passwords until the throttle: the page says how long to wait.
  for (let i = 0; i < 8; i += 1) {
    await c.fill('#user', ALICE.user);
    await c.fill('#pass', `wrong-${i}`);
    const said = await c.locator('#messages li.info').count();
    await c.click('#login-button');
    await c.waitForFunction((n) => document.querySelectorAll('#messages li.info').length > n, said);
    const state = await c.getAttribute('body', 'data-state');
    if (/too many failed logins; try again in \d+ s/.test(state)) {
      console.log(`ok (f) the throttled page says: ${state}`);
      break;
    }
    check(i < 7, `never throttled; the page says: ${state}`);
  }

  fs.mkdirSync(path.dirname(screenshot), { recursive: true });
  await a.screenshot({ path: screenshot, fullPage: true });
  console.log(`screenshot: ${screenshot}`);

  check(errors.length === 0, `browser errors:\n${errors.join('\n')}`);
  const bad = log.filter((l) =>
    /panick|alice-browser-pw|bob-browser-pw|not-alices-password|wrong-\d|pass=/.test(l),
  );
  check(bad.length === 0, `server log has a panic or a secret:\n${bad.join('\n')}`);
}

async function cleanUp() {
  if (browser) await browser.close().catch(() => {});
  if (attacker) attacker.close();
  if (server && server.exitCode === null) {
    server.removeAllListeners('exit');
    server.kill('SIGTERM');
    await new Promise((r) => {
      const t = setTimeout(() => {
        server.kill('SIGKILL');
        r();
      }, 5_000);
      server.on('exit', () => {
        clearTimeout(t);
        r();
      });
    });
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
}

const watchdog = setTimeout(() => {
  console.error(`browser tests: watchdog: still running after ${WATCHDOG / 1000} s`);
  console.error(`--- wsgate log ---\n${log.join('\n')}`);
  if (server) server.kill('SIGKILL');
  process.exit(1);
}, WATCHDOG);

let code = 0;
try {
  await run();
  console.log('browser tests: all passed');
} catch (e) {
  code = 1;
  console.error(`browser tests: FAILED: ${e.stack || e}`);
  console.error(`--- wsgate log ---\n${log.join('\n')}`);
} finally {
  await cleanUp();
  clearTimeout(watchdog);
}
process.exit(code);
