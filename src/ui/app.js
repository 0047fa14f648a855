// Mailroom's dashboard. Polls GET /v1/overview once a second (every five while the tab is
// hidden) and renders it; everything else goes through the public API with the same token.
// No framework and no build step: the server compiles this file in. Every value that came from
// a client (kinds, payloads, errors) is put in the page as text, never as HTML.

const HISTORY = 300; // seconds of chart, as the server keeps
const TOKEN_KEY = 'mailroom.token';
const POLL_MS = 1000;
const HIDDEN_POLL_MS = 5000;

const $ = (id) => document.getElementById(id);
const num = new Intl.NumberFormat();
const dec = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
/** A count, or "unknown" for a figure the server could not get (null: NATS did not answer). */
const count = (n) => (n === null ? 'unknown' : num.format(n));

let token = sessionStorage.getItem(TOKEN_KEY) || '';
let tokenRequired = false;
let started = false;

const state = {
  overview: null,
  seq: 0, // the newest history sample we hold
  lastOk: 0, // when the last overview arrived
  pid: null, // "pid/started_at_ms" of the process that answered last
  nextPoll: 0, // the timer of the next poll
  history: new Map(), // kind -> { completed: number[], failed: number[] }
  schemas: new Map(), // kind -> payload JSON schema
  pools: new Map(), // kind -> pool
  deadSeen: null, // what the dead-letter list was last loaded for
  deadNext: null,
  lookup: 0, // the current lookup, so an older one stops following
  lookupAbort: null, // ends the current lookup's request (a long-poll holds a connection)
  skew: 0, // the server's clock minus this browser's, from the last overview
};

// ---------------------------------------------------------------------------------------------
// DOM and formatting helpers

/** An element with attributes and children (strings become text nodes). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function setText(id, text) {
  const el = $(id);
  if (el && el.textContent !== text) el.textContent = text;
}

function ms(x) {
  if (x === null || x === undefined) return '–';
  if (x < 1) return `${dec.format(x)} ms`;
  if (x < 1000) return `${num.format(Math.round(x))} ms`;
  return `${dec.format(x / 1000)} s`;
}

function bytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : dec.format(n)} ${units[i]}`;
}

/** Now on the server's clock: ages of the server's timestamps do not depend on this browser's. */
function serverNow() {
  return Date.now() + state.skew;
}

function ago(atMs) {
  const s = Math.max(0, Math.round((serverNow() - atMs) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

function uptime(sinceMs) {
  const s = Math.max(0, Math.round((serverNow() - sinceMs) / 1000));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function time(atMs) {
  return new Date(atMs).toLocaleString(undefined, {
    hour: '2-digit', minute: '2-digit', second: '2-digit', fractionalSecondDigits: 3,
    month: 'short', day: 'numeric',
  });
}

function pretty(value) {
  return JSON.stringify(value, null, 2);
}

function badge(status) {
  return h('span', { class: `badge s-${status}` }, status.replace('_', ' '));
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && typeof problem === 'object' ? problem.detail || problem.title : null;
    super(detail || `the server answered ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, { method = 'GET', body, signal } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    signal,
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  if (res.status === 401 && tokenRequired) askForToken('That token is not accepted any more.');
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

// ---------------------------------------------------------------------------------------------
// The token

function askForToken(message = '') {
  token = '';
  sessionStorage.removeItem(TOKEN_KEY);
  $('app').hidden = true;
  $('login').hidden = false;
  $('sign-out').hidden = true;
  $('login-error').textContent = message;
  $('token').focus();
}

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const given = $('token').value.trim();
  if (!given) return;
  token = given;
  try {
    await api(`/v1/overview?history=0`);
  } catch (err) {
    token = '';
    $('login-error').textContent = err.status === 401
      ? 'That token is not accepted.'
      : `Could not reach the server: ${err.message}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $('token').value = '';
  $('login-error').textContent = '';
  start();
});

$('sign-out').addEventListener('click', () => askForToken());

// ---------------------------------------------------------------------------------------------
// The overview, once a second

function show() {
  $('login').hidden = true;
  $('app').hidden = false;
  $('sign-out').hidden = !tokenRequired;
}

async function start() {
  show();
  // Every time: after a rejected stored token, the routes were never read.
  await loadRoutes().catch(() => {});
  if (!started) {
    started = true;
    poll();
  }
}

async function loadRoutes() {
  const { routes } = await api('/v1/routes');
  for (const r of routes) {
    state.schemas.set(r.kind, r.payload_schema);
    state.pools.set(r.kind, r.pool);
  }
  fillKinds(routes.map((r) => r.kind));
}

async function poll() {
  const began = Date.now();
  if (token || !tokenRequired) {
    // The seconds missed since the last answer (a hidden tab, a lost connection), and a few more.
    const gap = state.lastOk ? Math.ceil((Date.now() - state.lastOk) / 1000) + 3 : HISTORY;
    const want = state.seq === 0 ? HISTORY : Math.min(HISTORY, Math.max(10, gap));
    try {
      const asked = Date.now();
      const o = await api(`/v1/overview?history=${want}`);
      connection(true);
      state.lastOk = Date.now();
      // The answer was made about halfway through the request.
      state.skew = o.now_ms - (asked + state.lastOk) / 2;
      const process = `${o.pid}/${o.started_at_ms}`;
      if (state.pid !== null && (process !== state.pid || o.history_seq < state.seq)) {
        // Another process answers now (a restart, even under the same pid, as PID 1 in a
        // container): its history starts afresh, and its routes may differ.
        state.seq = 0;
        state.history.clear();
        loadRoutes().catch(() => {});
      }
      state.pid = process;
      merge(o);
      render(o);
    } catch (err) {
      connection(false, err);
    }
  }
  const every = document.hidden ? HIDDEN_POLL_MS : POLL_MS;
  clearTimeout(state.nextPoll);
  state.nextPoll = setTimeout(poll, Math.max(100, every - (Date.now() - began)));
}

document.addEventListener('visibilitychange', () => {
  if (document.hidden || !started) return;
  if (state.overview) render(state.overview);
  // Back in view: poll now rather than at the end of the hidden tab's slower period.
  clearTimeout(state.nextPoll);
  state.nextPoll = setTimeout(poll, 0);
});

function connection(ok, err) {
  const el = $('conn');
  const text = ok ? 'live' : 'disconnected, retrying…';
  // Only on a change: a live region that is rewritten every second is read out every second.
  if (el.textContent === text) return;
  el.className = ok ? 'pill good' : 'pill bad';
  el.textContent = text;
  el.title = ok ? 'Updated every second' : String(err && err.message);
}

/** Appends the samples that are newer than the ones held. */
function merge(o) {
  const fresh = o.history_seq - state.seq;
  for (const r of o.routes) {
    let h = state.history.get(r.kind);
    if (!h) {
      h = { completed: [], failed: [] };
      state.history.set(r.kind, h);
    }
    for (const series of ['completed', 'failed']) {
      const got = r.history[series];
      const take = state.seq === 0 ? got.length : Math.min(Math.max(fresh, 0), got.length);
      h[series].push(...got.slice(got.length - take));
      if (h[series].length > HISTORY) h[series].splice(0, h[series].length - HISTORY);
    }
  }
  state.seq = Math.max(state.seq, o.history_seq);
}

function render(o) {
  state.overview = o;
  const t = o.totals;
  setText('meta', `${o.node} · pid ${o.pid} · v${o.version} · up ${uptime(o.started_at_ms)}`);
  setText('total-accepted', num.format(t.accepted));
  setText('total-completed', num.format(t.completed));
  setText('total-failed', num.format(t.failed));
  setText('total-dead', num.format(t.dead));
  setText('total-in-flight', num.format(t.in_flight));
  setText('total-in-flight-detail',
    `${count(t.queued)} queued · ${num.format(t.delayed)} delayed · ${num.format(t.running)} running`);
  setText('total-rate', dec.format(t.finished_per_second));
  setText('total-rejected', num.format(t.rejected));
  $('draining-pill').hidden = !o.draining;
  renderStorage(o);
  renderRoutes(o.routes);
  // The list is reloaded only when it changes: its ages move on here.
  for (const when of document.querySelectorAll('#dead-list .when')) {
    when.textContent = ago(Number(when.dataset.at));
  }
  fillKinds(o.routes.map((r) => r.kind));
  // Unknown while NATS does not give it (a cluster node): said here, as the list cannot load.
  if (o.dead_letters === null) {
    setText('dead-count', '(unknown)');
    $('dead-empty').hidden = true; // not "No dead letters": nobody knows
  }
  const deadKey = `${o.dead_letters}/${t.dead}`;
  if (deadKey !== state.deadSeen) {
    state.deadSeen = deadKey;
    loadDead().catch((err) => setText('dead-status', `Could not list dead letters: ${err.message}`));
  }
}

function renderStorage(o) {
  const s = o.storage;
  const pill = $('storage-pill');
  pill.hidden = false;
  if (s.kind === 'memory') {
    pill.className = 'pill';
    pill.textContent = 'in memory';
    pill.title = 'storage.kind = "memory": accepted work does not survive a restart';
  } else if (s.kind === 'cluster') {
    pill.className = s.health === 'ok' ? 'pill good' : 'pill bad';
    pill.textContent = s.health === 'ok' ? 'cluster ok' : 'NATS not answering';
    pill.title = `cluster node; NATS at ${s.path}`;
  } else {
    pill.className = s.health === 'ok' ? 'pill good' : 'pill bad';
    pill.textContent = s.health === 'ok' ? 'journal ok' : 'journal failing';
    pill.title = `${s.path} · fsync ${s.fsync}`;
  }
  const storage = {
    journal: `journal in ${s.path} (fsync ${s.fsync})`,
    cluster: `NATS JetStream at ${s.path}`,
  }[s.kind] || 'memory (not durable)';
  const facts = [
    ['Node', o.node],
    ['Process', `pid ${o.pid}, up ${uptime(o.started_at_ms)}`],
    ['Storage', storage],
  ];
  if (s.kind === 'journal') {
    facts.push(
      ['Health', s.health === 'ok' ? 'ok' : 'failing: writes failed within the last minute'],
      ['On disk', bytes(s.bytes)],
      ['Records', `${num.format(s.records)} (${dec.format(s.records_per_second)} / s)`],
      ['fsyncs', `${num.format(s.fsyncs)} (${dec.format(s.fsyncs_per_second)} / s)`],
      ['Write failures', num.format(s.failures)],
    );
  }
  if (o.cluster) {
    const c = o.cluster;
    // A figure NATS did not give is null: the total is unknown then, not short.
    const sum = (f) => (c.routes.some((r) => f(r) === null)
      ? 'unknown (NATS did not answer)'
      : num.format(c.routes.reduce((n, r) => n + f(r), 0)));
    facts.push(
      ['Cluster', `${c.name} (queued counts are the cluster's; the rest this node's)`],
      ['NATS', c.connected ? 'connected' : 'unreachable: new messages get 503 until it is back'],
      ['Running here', num.format(c.running_here)],
      ['Delivered, not acked', sum((r) => r.ack_pending)],
      ['Redelivered', sum((r) => r.redelivered)],
    );
  }
  facts.push(['Outcomes held', num.format(o.stored)]);
  const dl = $('node-facts');
  const key = JSON.stringify(facts);
  if (dl.dataset.key === key) return;
  dl.dataset.key = key;
  dl.replaceChildren(...facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// ---------------------------------------------------------------------------------------------
// Routes

function renderRoutes(routes) {
  const body = $('routes-body');
  const kinds = routes.map((r) => r.kind).join('\n');
  if (body.dataset.kinds !== kinds) {
    body.dataset.kinds = kinds;
    body.replaceChildren(...routes.map(routeRow));
  }
  routes.forEach((r, i) => updateRow(body.rows[i], r));
}

function cell(label, cls, ...children) {
  return h('td', { 'data-label': label, class: cls }, ...children);
}

function routeRow(r) {
  return h('tr', { 'data-kind': r.kind },
    h('th', { scope: 'row', 'data-label': 'Kind' }, h('span', { class: 'kind' }, r.kind),
      h('span', { class: 'badge degraded', hidden: true }, 'degraded')),
    cell('Processor', 'proc', `${r.processor} `, h('span', { class: 'pool' }, r.pool)),
    cell('Queued', 'num q'),
    cell('Delayed', 'num d'),
    cell('Running', 'num r'),
    cell('Load', 'load', h('div', { class: 'meter', role: 'meter', 'aria-valuemin': 0 }, h('div', { class: 'fill' })),
      h('span', { class: 'load-text' })),
    cell('Done / s', 'num rate'),
    cell('Last 5 minutes', 'chart'),
    cell('Run p50 / p99', 'num pct'),
    cell('Failed / dead', 'num f'),
    cell('Restarts', 'num rs'),
  );
}

function updateRow(tr, r) {
  const q = (sel) => tr.querySelector(sel);
  q('.degraded').hidden = !r.degraded;
  tr.classList.toggle('is-degraded', r.degraded);
  const put = (sel, text) => {
    const el = q(sel);
    if (el.textContent !== text) el.textContent = text;
  };
  put('.q', count(r.queued));
  put('.d', num.format(r.delayed));
  put('.r', `${num.format(r.running)} / ${num.format(r.concurrency)}`);
  // Unknown while the queued count is (a cluster node whose NATS does not answer): the meter
  // then shows what is known (delayed and running) and says the total is unknown.
  const known = r.delayed + r.running;
  const inFlight = r.queued === null ? null : r.queued + known;
  const meter = q('.meter');
  meter.setAttribute('aria-valuemax', r.capacity);
  meter.setAttribute('aria-valuenow', inFlight === null ? known : inFlight);
  if (inFlight === null) meter.setAttribute('aria-valuetext', `unknown (at least ${known})`);
  else meter.removeAttribute('aria-valuetext');
  meter.setAttribute('aria-label', `${r.kind}: ${count(inFlight)} of ${r.capacity} places in use`);
  const share = r.capacity ? (inFlight === null ? known : inFlight) / r.capacity : 0;
  q('.fill').style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
  meter.classList.toggle('hot', share >= 0.8);
  meter.classList.toggle('unknown', inFlight === null);
  put('.load-text', `${count(inFlight)} / ${num.format(r.capacity)}`);
  put('.rate', dec.format(r.completed_per_second));
  put('.pct', `${ms(r.run_p50_ms)} / ${ms(r.run_p99_ms)}`);
  const failures = r.failed + r.dead;
  put('.f', num.format(failures));
  q('.f').classList.toggle('bad-text', failures > 0);
  put('.rs', num.format(r.restarts));
  q('.rs').classList.toggle('bad-text', r.restarts > 0);
  const hist = state.history.get(r.kind) || { completed: [], failed: [] };
  q('.chart').replaceChildren(sparkline(r.kind, hist));
}

/** An SVG chart of the last minutes: completed per second as an area, failures as a line. */
function sparkline(kind, hist) {
  const W = 180;
  const H = 36;
  const NS = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(NS, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('width', W);
  svg.setAttribute('height', H);
  svg.setAttribute('class', 'spark');
  svg.setAttribute('role', 'img');
  const done = hist.completed;
  const bad = hist.failed;
  const peak = Math.max(1, ...done, ...bad);
  const total = done.reduce((a, b) => a + b, 0);
  svg.setAttribute('aria-label',
    `${kind}: ${num.format(total)} completed in the last ${done.length} s, peak ${num.format(peak)} / s`);
  const title = document.createElementNS(NS, 'title');
  title.textContent = `peak ${num.format(peak)} / s`;
  svg.append(title);
  const x = (i, n) => W - (n - 1 - i) * (W / (HISTORY - 1));
  const y = (v) => H - 1 - (v / peak) * (H - 4);
  if (done.length > 1) {
    let d = `M${x(0, done.length).toFixed(1)},${H}`;
    done.forEach((v, i) => { d += `L${x(i, done.length).toFixed(1)},${y(v).toFixed(1)}`; });
    d += `L${W},${H}Z`;
    const area = document.createElementNS(NS, 'path');
    area.setAttribute('d', d);
    area.setAttribute('class', 'area');
    svg.append(area);
  }
  if (bad.some((v) => v > 0)) {
    const pts = bad.map((v, i) => `${x(i, bad.length).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
    const line = document.createElementNS(NS, 'polyline');
    line.setAttribute('points', pts);
    line.setAttribute('class', 'fail');
    svg.append(line);
  }
  const base = document.createElementNS(NS, 'line');
  base.setAttribute('x1', 0);
  base.setAttribute('x2', W);
  base.setAttribute('y1', H - 0.5);
  base.setAttribute('y2', H - 0.5);
  base.setAttribute('class', 'base');
  svg.append(base);
  return svg;
}

// ---------------------------------------------------------------------------------------------
// Dead letters

const DEAD_PAGE = 50;

async function loadDead() {
  const page = await api(`/v1/dead-letters?limit=${DEAD_PAGE}`);
  renderDead(page, false);
}

$('dead-more').addEventListener('click', async () => {
  if (!state.deadNext) return;
  try {
    const page = await api(`/v1/dead-letters?limit=${DEAD_PAGE}&after=${state.deadNext}`);
    renderDead(page, true);
  } catch (err) {
    setText('dead-status', `Could not list dead letters: ${err.message}`);
  }
});

function renderDead(page, append) {
  const list = $('dead-list');
  // A dead letter does not change: one already shown keeps its element, and with it an open
  // payload or a retry's answer.
  const shown = new Map([...list.children].map((li) => [li.dataset.id, li]));
  const items = page.dead_letters.map((dl) => shown.get(dl.id) || deadItem(dl));
  if (append) list.append(...items);
  else list.replaceChildren(...items);
  state.deadNext = page.next;
  $('dead-more').hidden = !page.next;
  $('dead-empty').hidden = list.children.length > 0;
  const n = state.overview ? state.overview.dead_letters : list.children.length;
  setText('dead-count', n === null ? '(unknown)' : n ? `(${num.format(n)})` : '');
  const kinds = [...new Set([...list.children].map((li) => li.dataset.kind))];
  const select = $('retry-kind');
  const before = select.value;
  select.replaceChildren(...kinds.map((k) => h('option', { value: k }, k)));
  if (kinds.includes(before)) select.value = before;
  $('retry-all').disabled = kinds.length === 0;
  select.disabled = kinds.length === 0;
}

function deadItem(dl) {
  const last = dl.errors.length ? dl.errors[dl.errors.length - 1] : null;
  const payloadBox = h('pre', { class: 'payload', hidden: true });
  const payloadButton = h('button', {
    type: 'button',
    class: 'quiet',
    'aria-expanded': 'false',
    'aria-label': `Show the payload of dead letter ${dl.id}`,
    onclick: async () => {
      const open = payloadBox.hidden;
      payloadBox.hidden = !open;
      payloadButton.setAttribute('aria-expanded', String(open));
      payloadButton.textContent = open ? 'Hide payload' : 'Payload';
      if (open && !payloadBox.textContent) {
        try {
          const whole = dl.payload_truncated ? (await api(`/v1/dead-letters/${dl.id}`)).payload : dl.payload;
          payloadBox.textContent = pretty(whole);
        } catch (err) {
          payloadBox.textContent = `Could not load it: ${err.message}`;
        }
      }
    },
  }, 'Payload');
  const result = h('p', { class: 'status', role: 'status' });
  const retry = h('button', {
    type: 'button',
    class: 'retry',
    'aria-label': `Retry dead letter ${dl.id}`,
    onclick: async () => {
      retry.disabled = true;
      try {
        const r = await api(`/v1/dead-letters/${dl.id}/retry`, { method: 'POST' });
        result.textContent = `Replayed as ${r.id} (${r.status})`;
        // Also where it outlives the list's reload (the retried letter leaves the list).
        $('dead-status').replaceChildren(`Replayed ${dl.id} as `, idLink(r.id, 'new-id'), ` (${r.status})`);
        state.deadSeen = null; // reload the list on the next poll
      } catch (err) {
        retry.disabled = false;
        result.textContent = `Not retried: ${err.message}`;
      }
    },
  }, 'Retry');
  return h('li', { class: 'dead-item', 'data-id': dl.id, 'data-kind': dl.kind },
    h('div', { class: 'dead-head' },
      h('span', { class: 'kind' }, dl.kind),
      idLink(dl.id),
      h('span', { class: 'when', title: time(dl.died_at_ms), 'data-at': dl.died_at_ms },
        ago(dl.died_at_ms))),
    h('p', { class: 'dead-error' },
      last ? h('span', { class: 'class' }, last.class) : null,
      last ? ` ${last.message}` : 'no error recorded'),
    h('div', { class: 'dead-foot' },
      h('p', { class: 'dead-meta' },
        `${dl.attempts} attempt${dl.attempts === 1 ? '' : 's'} · ${bytes(dl.payload_bytes)} payload`,
        dl.replay_of ? ' · replay of ' : '', dl.replay_of ? idLink(dl.replay_of) : null),
      h('div', { class: 'actions' }, retry, payloadButton)),
    result,
    payloadBox);
}

$('retry-all').addEventListener('click', async () => {
  const kind = $('retry-kind').value;
  if (!kind) return;
  const button = $('retry-all');
  button.disabled = true;
  setText('dead-status', `Retrying every dead letter of ${kind}…`);
  // Collect first, then retry: a replay that dies again joins the list, and must not be
  // retried by this same click.
  const ids = [];
  try {
    let after = null;
    do {
      const page = await api(`/v1/dead-letters?limit=1000${after ? `&after=${after}` : ''}`);
      ids.push(...page.dead_letters.filter((d) => d.kind === kind).map((d) => d.id));
      after = page.next;
    } while (after);
  } catch (err) {
    setText('dead-status', `Could not list dead letters: ${err.message}`);
    button.disabled = false;
    return;
  }
  let done = 0;
  const failed = [];
  for (const id of ids) {
    try {
      await api(`/v1/dead-letters/${id}/retry`, { method: 'POST' });
      done += 1;
    } catch (err) {
      failed.push(`${id}: ${err.message}`);
    }
  }
  setText('dead-status', failed.length
    ? `Retried ${done} of ${ids.length} dead letters of ${kind}; not retried: ${failed.join('; ')}`
    : `Retried ${done} dead letter${done === 1 ? '' : 's'} of ${kind}.`);
  button.disabled = false;
  state.deadSeen = null;
});

// ---------------------------------------------------------------------------------------------
// Message lookup

function idLink(id, cls = '') {
  return h('a', {
    href: `#${id}`,
    class: `id ${cls}`.trim(),
    onclick: (e) => {
      e.preventDefault();
      lookup(id);
    },
  }, id);
}

$('lookup-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const id = $('lookup-id').value.trim();
  if (id) lookup(id);
});

window.addEventListener('hashchange', () => {
  const id = location.hash.slice(1);
  if (id) lookup(id);
});

async function lookup(id) {
  const mine = ++state.lookup;
  // The last lookup's long-poll lets go of its connection now: a browser opens only a few to
  // one server, and the page's own polling needs one.
  if (state.lookupAbort) state.lookupAbort.abort();
  const abort = new AbortController();
  state.lookupAbort = abort;
  const { signal } = abort;
  $('lookup-id').value = id;
  if (location.hash !== `#${id}`) history.replaceState(null, '', `#${id}`);
  const box = $('message');
  box.replaceChildren(h('p', { class: 'status' }, 'Looking…'));
  if (!$('lookup').contains(document.activeElement)) $('lookup').scrollIntoView({ block: 'nearest' });
  let waitMs = 0;
  for (;;) {
    let o;
    try {
      o = await api(`/v1/messages/${encodeURIComponent(id)}${waitMs ? `?wait_ms=${waitMs}` : ''}`, { signal });
    } catch (err) {
      if (mine !== state.lookup) return;
      box.replaceChildren(h('p', { class: 'error' }, err.status === 404
        ? `No message with id ${id}. Finished outcomes are kept for dispatch.result_ttl_ms.`
        : `Could not look it up: ${err.message}`));
      return;
    }
    if (mine !== state.lookup) return;
    let dead = null;
    if (o.status === 'dead') dead = await api(`/v1/dead-letters/${o.id}`, { signal }).catch(() => null);
    if (mine !== state.lookup) return;
    box.replaceChildren(messageView(o, dead));
    if (['completed', 'failed', 'timed_out', 'cancelled', 'dead'].includes(o.status)) return;
    waitMs = 20000; // long-poll until it finishes
  }
}

function messageView(o, dead) {
  const accepted = o.accepted_at_ms;
  const t = o.timings;
  const terminal = ['completed', 'failed', 'timed_out', 'cancelled', 'dead'].includes(o.status);
  const steps = [h('li', {}, h('strong', {}, 'Accepted'), ` ${time(accepted)} (from ${o.source})`)];
  if (o.attempts > 0) {
    steps.push(h('li', {}, h('strong', {}, o.attempts > 1 ? `Attempt ${o.attempts} started` : 'Started'),
      ` ${time(accepted + t.queued_ms)} (after ${ms(t.queued_ms)})`));
  }
  if (dead) {
    dead.errors.forEach((e, i) => steps.push(h('li', { class: 'bad-text' },
      h('strong', {}, `Attempt ${i + 1} failed`), ` ${e.class}: ${e.message}`)));
  }
  if (terminal) {
    steps.push(h('li', {}, h('strong', {}, `Finished ${o.status.replace('_', ' ')}`),
      ` ${time(accepted + t.total_ms)} (ran ${ms(t.run_ms)}, ${ms(t.total_ms)} in all)`));
  } else {
    steps.push(h('li', { class: 'pending' }, h('strong', {}, o.status), ' — following it live'));
  }
  const pool = state.pools.get(o.kind);
  const where = state.overview
    ? `${state.overview.node}${pool ? `, ${pool === 'cpu' ? 'CPU pool' : 'I/O arbiter'}` : ''}`
    : null;
  const view = h('div', {},
    h('div', { class: 'message-head' }, badge(o.status), h('span', { class: 'kind' }, o.kind),
      h('code', { class: 'id' }, o.id)),
    h('dl', { class: 'facts' },
      h('dt', {}, 'Attempts'), h('dd', {}, String(o.attempts)),
      where ? [h('dt', {}, o.attempts > 0 ? 'Ran on' : 'Runs on'), h('dd', {}, where)] : null,
      o.replay_of ? [h('dt', {}, 'Replay of'), h('dd', {}, idLink(o.replay_of))] : null),
    h('ol', { class: 'timeline' }, steps));
  if (o.result !== undefined) {
    view.append(h('h3', {}, 'Result'), h('pre', { class: 'result' }, pretty(o.result)));
  }
  if (o.error) {
    view.append(h('h3', {}, 'Error'), h('p', { class: 'error' }, h('span', { class: 'class' }, o.error.class), ` ${o.error.message}`));
  }
  if (o.status === 'queued' || o.status === 'delayed') {
    const cancel = h('button', {
      type: 'button',
      class: 'quiet',
      onclick: async () => {
        cancel.disabled = true;
        try {
          await api(`/v1/messages/${o.id}`, { method: 'DELETE' });
          lookup(o.id);
        } catch (err) {
          cancel.disabled = false;
          cancel.textContent = `Cancel (${err.message})`;
        }
      },
    }, 'Cancel it');
    view.append(cancel);
  }
  return view;
}

// ---------------------------------------------------------------------------------------------
// Submitting

/** An example value for a JSON schema: its default or first example, else one of its type. */
function example(schema) {
  if (!schema || typeof schema !== 'object') return null;
  if ('default' in schema) return schema.default;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  if ('const' in schema) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  for (const k of ['oneOf', 'anyOf']) {
    if (Array.isArray(schema[k]) && schema[k].length) return example(schema[k][0]);
  }
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case 'object': {
      const out = {};
      const props = schema.properties || {};
      for (const k of schema.required || Object.keys(props)) out[k] = example(props[k]);
      return out;
    }
    case 'integer':
    case 'number':
      return schema.minimum ?? 0;
    case 'string':
      return 'hello';
    case 'boolean':
      return false;
    case 'array':
      return [];
    default:
      return { hello: 'world' };
  }
}

function fillKinds(kinds) {
  const select = $('submit-kind');
  const key = kinds.join('\n');
  if (select.dataset.kinds === key) return;
  select.dataset.kinds = key;
  const before = select.value;
  select.replaceChildren(...kinds.map((k) => h('option', { value: k }, k)));
  if (kinds.includes(before)) select.value = before;
  suggest();
}

let suggested = '';
function suggest() {
  const area = $('submit-payload');
  if (area.value.trim() && area.value !== suggested) return; // the user wrote their own
  suggested = pretty(example(state.schemas.get($('submit-kind').value)));
  area.value = suggested;
}

$('submit-kind').addEventListener('change', suggest);

$('submit-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const status = $('submit-status');
  const area = $('submit-payload');
  status.className = 'status';
  const body = { kind: $('submit-kind').value };
  const text = area.value.trim();
  if (text) {
    try {
      body.payload = JSON.parse(text);
      area.removeAttribute('aria-invalid');
    } catch (err) {
      area.setAttribute('aria-invalid', 'true');
      status.className = 'status error';
      status.textContent = `The payload is not valid JSON: ${err.message}`;
      area.focus();
      return;
    }
  }
  const delay = $('submit-delay').value.trim();
  if (delay) body.delay_ms = Number(delay);
  const key = $('submit-key').value.trim();
  if (key) body.key = key;
  $('submit-button').disabled = true;
  try {
    const r = await api('/v1/messages', { method: 'POST', body });
    status.replaceChildren('Accepted as ', idLink(r.id, 'submitted-id'), ` (${r.status})`);
    lookup(r.id);
  } catch (err) {
    status.className = 'status error';
    status.textContent = `Refused (${err.status}): ${err.message}`;
  } finally {
    $('submit-button').disabled = false;
  }
});

// ---------------------------------------------------------------------------------------------
// Start: ask for a token only when the server wants one.

(async () => {
  try {
    const res = await fetch('/ui/auth', { cache: 'no-store' });
    tokenRequired = (await res.json()).token_required === true;
  } catch {
    tokenRequired = false;
  }
  if (tokenRequired && !token) {
    askForToken();
    return;
  }
  await start();
  const id = location.hash.slice(1);
  if (id) lookup(id);
})();
