// baton web console: a hash-routed single page over the admin API.
// The API, JSON shapes, element ids and classes are fixed by the console
// contract; the browser test and the server rely on them.

const TOKEN_KEY = 'baton.token';
const INSTANCE_FILTERS = ['process', 'version', 'status', 'step', 'incident', 'key_prefix', 'started_after', 'started_before'];
const STATUSES = ['pending', 'active', 'completed', 'failed', 'cancelled'];
const ENDED = new Set(['completed', 'failed', 'cancelled']);

const $ = (selector, root = document) => root.querySelector(selector);
const enc = encodeURIComponent;

// ---------------------------------------------------------------- HTML

// Markup that is already safe; everything else interpolated into `html` is escaped.
class Html {
  constructor(text) { this.text = text; }
}

function esc(value) {
  return String(value).replace(/[&<>"']/g, (c) => (
    { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]
  ));
}

function piece(value) {
  if (value instanceof Html) return value.text;
  if (Array.isArray(value)) return value.map(piece).join('');
  // false/null/undefined vanish so that `${cond && html`...`}` reads naturally.
  if (value === null || value === undefined || value === false) return '';
  return esc(value);
}

// Keys, reasons and variables come from outside: escaping by default is the
// only way not to forget it somewhere.
function html(strings, ...values) {
  let out = strings[0];
  values.forEach((value, i) => { out += piece(value) + strings[i + 1]; });
  return new Html(out);
}

function setMain(content) {
  $('#main').innerHTML = piece(content);
}

// Replacing identical markup would reset focus, scroll and hover state every
// refresh (and pull elements from under a user's click), so only changes land.
const rendered = new WeakMap();
function renderInto(selector, content) {
  const el = typeof selector === 'string' ? $(selector) : selector;
  if (!el) return;
  const text = piece(content);
  if (rendered.get(el) === text) return;
  rendered.set(el, text);
  el.innerHTML = text;
}

// ---------------------------------------------------------------- session and API

const session = { token: sessionStorage.getItem(TOKEN_KEY), name: null, role: null };
const isOperator = () => session.role === 'operator';

class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function api(path, options = {}) {
  const { token = session.token, signingIn = false, body, ...rest } = options;
  const headers = { Accept: 'application/json', Authorization: `Bearer ${token}` };
  const init = { ...rest, headers };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    throw new ApiError(`cannot reach the server (${e.message})`, 0);
  }
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  const message = data && typeof data === 'object' && data.error;
  if (res.status === 401 && !signingIn) {
    signOut(message || 'The token was rejected; sign in again.');
  }
  if (!res.ok || message) {
    throw new ApiError(message || `${res.status} ${res.statusText || 'error'} from ${path}`, res.status);
  }
  return data;
}

function showError(err) {
  if (!session.role) return; // signed out: the sign-in form shows the reason
  const el = $('#error');
  el.textContent = err instanceof Error ? err.message : String(err);
  el.hidden = false;
}

function clearError() {
  const el = $('#error');
  el.textContent = '';
  el.hidden = true;
}

async function guard(fn) {
  try {
    return await fn();
  } catch (e) {
    showError(e);
    return undefined;
  }
}

function showSignIn(message) {
  stopPage();
  $('#nav').hidden = true;
  $('#account').hidden = true;
  $('#main').hidden = true;
  clearError();
  $('#signin').hidden = false;
  const err = $('#signin-error');
  err.textContent = message || '';
  err.hidden = !message;
  $('#token').focus();
}

function showApp() {
  $('#signin').hidden = true;
  $('#who').textContent = `${session.name} (${session.role})`;
  $('#nav').hidden = false;
  $('#account').hidden = false;
  $('#main').hidden = false;
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  Object.assign(session, { token: null, name: null, role: null });
  $('#main').innerHTML = '';
  showSignIn(message);
}

async function signIn(token, signingIn) {
  const me = await api('/api/v1/whoami', { token, signingIn });
  // Anything but an explicit operator gets the read-only console.
  Object.assign(session, { token, name: me.name, role: me.role === 'operator' ? 'operator' : 'viewer' });
  sessionStorage.setItem(TOKEN_KEY, token);
  showApp();
  route();
}

// ---------------------------------------------------------------- routing

let page = null;

function stopPage() {
  if (page) page.stop();
  page = null;
}

// A page's timers and polls die with it, so a late answer never paints over
// the page the user has moved on to.
function newPage() {
  stopPage();
  const timers = new Set();
  const ctx = {
    live: true,
    stop() {
      ctx.live = false;
      timers.forEach(clearTimeout);
      timers.clear();
    },
    // Waits for the previous run before scheduling the next one, so slow answers never pile up.
    every(ms, fn) {
      const tick = async () => {
        if (!ctx.live) return;
        await guard(fn);
        if (ctx.live) timers.add(setTimeout(tick, ms));
      };
      timers.add(setTimeout(tick, ms));
    },
    // Never resolves once the page is gone, which ends the poll that awaits it.
    sleep(ms) {
      return new Promise((resolve) => timers.add(setTimeout(resolve, ms)));
    },
  };
  page = ctx;
  return ctx;
}

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, '');
  const q = hash.indexOf('?');
  const path = q < 0 ? hash : hash.slice(0, q);
  const params = new URLSearchParams(q < 0 ? '' : hash.slice(q + 1));
  const parts = path.split('/').filter(Boolean).map((p) => {
    try { return decodeURIComponent(p); } catch { return p; }
  });
  return { parts, params };
}

function href(parts, params = {}) {
  const query = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') query.set(k, v);
  }
  const qs = query.toString();
  return `#/${parts.map(enc).join('/')}${qs ? `?${qs}` : ''}`;
}

// Setting the same hash fires no hashchange, yet "Apply" must still reload.
function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

const pages = {
  '': overviewPage,
  instances: instancesPage,
  instance: instancePage,
  incidents: incidentsPage,
  definitions: definitionsPage,
  definition: definitionPage,
  heatmap: heatmapPage,
};

const navSection = { instance: 'instances', definition: 'definitions', heatmap: 'definitions' };

function route() {
  if (!session.role) return;
  const { parts, params } = parseHash();
  const [name = '', ...rest] = parts;
  const section = navSection[name] ?? name;
  document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.nav === section));
  clearError();
  const ctx = newPage();
  const render = pages[name];
  if (!render) {
    setMain(html`<section class="card"><h1>Not found</h1><p>No page at <code>${location.hash}</code>.</p></section>`);
    return;
  }
  window.scrollTo(0, 0);
  guard(() => render(ctx, rest, params));
}

// ---------------------------------------------------------------- formatting

function statusBadge(status) {
  const name = String(status ?? 'unknown');
  return html`<span class="status status-${name.replace(/[^a-z0-9-]/gi, '')}">${name}</span>`;
}

const pad = (n) => String(n).padStart(2, '0');

function localStamp(d) {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function fmtTime(value) {
  if (!value) return html`<span class="muted">—</span>`;
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return html`${value}`;
  return html`<time datetime="${value}" title="${value}">${localStamp(d)}</time>`;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 10000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 120000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 7200000) return `${Math.round(ms / 60000)} min`;
  return `${(ms / 3600000).toFixed(1)} h`;
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)} h`;
  return `${Math.round(seconds / 86400)} d`;
}

// datetime-local inputs speak local wall time; the API speaks RFC 3339 UTC.
function toLocalInput(value) {
  if (!value) return '';
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return '';
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function fromLocalInput(value) {
  if (!value) return '';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function truncate(text, max) {
  const s = String(text ?? '');
  return s.length > max ? `${s.slice(0, Math.max(1, max - 1))}…` : s;
}

function compactJson(value, max = 160) {
  return truncate(JSON.stringify(value), max);
}

// Instance ids are "<process>/<key>" and keys may themselves contain "/".
function splitInstanceId(id) {
  const s = String(id);
  const i = s.indexOf('/');
  return i < 0 ? { process: s, key: '' } : { process: s.slice(0, i), key: s.slice(i + 1) };
}

function instanceHref(process, key) {
  return href(['instance', process, key]);
}

function unreachableNote(list) {
  if (!list || !list.length) return '';
  const names = list.map((u) => (typeof u === 'string' ? u : JSON.stringify(u))).join(', ');
  return html`<p class="warning">Not every shard answered (${names}): numbers may be incomplete.</p>`;
}

// ---------------------------------------------------------------- confirmation dialog

// Resolves to {reason, compensate}, or null when the operator backs out.
function confirmDialog({ title, text, compensate = false }) {
  const dialog = $('#confirm');
  if (dialog.open) return Promise.resolve(null);
  const form = $('#confirm-form');
  const reason = $('#confirm-reason');
  const check = $('#confirm-compensate');
  $('#confirm-title').textContent = title;
  $('#confirm-text').textContent = text;
  reason.value = '';
  reason.setCustomValidity('');
  check.checked = false;
  $('#confirm-compensate-row').hidden = !compensate;
  dialog.showModal();
  reason.focus();
  return new Promise((resolve) => {
    const finish = (value) => {
      form.removeEventListener('submit', onSubmit);
      $('#confirm-no').removeEventListener('click', onBack);
      dialog.removeEventListener('cancel', onBack);
      reason.removeEventListener('input', onInput);
      if (dialog.open) dialog.close();
      resolve(value);
    };
    const onSubmit = (e) => {
      e.preventDefault();
      // `required` lets a blank reason through; the audit trail needs a real one.
      if (!reason.value.trim()) {
        reason.setCustomValidity('Give a reason.');
        reason.reportValidity();
        return;
      }
      finish({ reason: reason.value.trim(), compensate: compensate && check.checked });
    };
    const onBack = (e) => {
      e.preventDefault();
      finish(null);
    };
    const onInput = () => reason.setCustomValidity('');
    form.addEventListener('submit', onSubmit);
    $('#confirm-no').addEventListener('click', onBack);
    dialog.addEventListener('cancel', onBack);
    reason.addEventListener('input', onInput);
  });
}

// ---------------------------------------------------------------- diagram

const ROUND_KINDS = new Set(['start', 'end', 'completed', 'failed', 'cancelled', 'incident']);
const DASHED_EDGES = new Set(['fork', 'join', 'watch', 'late']);
// Must match the diagram's font in style.css: text is measured to fit its box.
const DIAGRAM_FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "DejaVu Sans", sans-serif';
const FONTS = {
  label: `600 12px ${DIAGRAM_FONT}`,
  detail: `400 10px ${DIAGRAM_FONT}`,
  heat: `500 10px ${DIAGRAM_FONT}`,
  edge: `400 10px ${DIAGRAM_FONT}`,
};

let measurer = null;
function textWidth(text, font) {
  measurer ??= document.createElement('canvas').getContext('2d');
  measurer.font = font;
  return measurer.measureText(text).width;
}

// SVG text does not wrap or clip: cut it to the room there is, with an ellipsis.
function fitText(value, font, room) {
  const text = String(value ?? '');
  if (textWidth(text, font) <= room) return text;
  let lo = 1;
  let hi = text.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (textWidth(`${text.slice(0, mid)}…`, font) <= room) lo = mid;
    else hi = mid - 1;
  }
  return `${text.slice(0, lo)}…`;
}

const edgeKey = (from, to) => `${from}\u0000${to}`;

function polylineMiddle(points) {
  let total = 0;
  const lengths = [];
  for (let i = 1; i < points.length; i += 1) {
    const len = Math.hypot(points[i].x - points[i - 1].x, points[i].y - points[i - 1].y);
    lengths.push(len);
    total += len;
  }
  let left = total / 2;
  for (let i = 1; i < points.length; i += 1) {
    const len = lengths[i - 1];
    if (left <= len || i === points.length - 1) {
      const t = len ? Math.min(1, left / len) : 0;
      const a = points[i - 1];
      const b = points[i];
      return { x: a.x + (b.x - a.x) * t, y: a.y + (b.y - a.y) * t, vertical: Math.abs(b.x - a.x) < Math.abs(b.y - a.y) };
    }
    left -= len;
  }
  return { x: points[0].x, y: points[0].y, vertical: true };
}

function nodeShape(n) {
  const cx = n.x + n.width / 2;
  const cy = n.y + n.height / 2;
  if (n.kind === 'switch') {
    return html`<polygon class="shape" points="${cx},${n.y} ${n.x + n.width},${cy} ${cx},${n.y + n.height} ${n.x},${cy}"/>`;
  }
  if (ROUND_KINDS.has(n.kind)) {
    // Square boxes become circles; wide ones a pill, so the label still fits.
    if (n.width < n.height * 1.3) {
      const r = Math.min(n.width, n.height) / 2;
      const inner = n.kind === 'end' ? html`<circle class="inner" cx="${cx}" cy="${cy}" r="${Math.max(1, r - 4)}"/>` : '';
      return html`<circle class="shape" cx="${cx}" cy="${cy}" r="${r}"/>${inner}`;
    }
    return html`<rect class="shape" x="${n.x}" y="${n.y}" width="${n.width}" height="${n.height}" rx="${n.height / 2}"/>`;
  }
  const rx = n.kind === 'wait' || n.kind === 'await' ? Math.min(18, n.height / 2) : 6;
  const rect = html`<rect class="shape" x="${n.x}" y="${n.y}" width="${n.width}" height="${n.height}" rx="${rx}"/>`;
  if (n.kind === 'parallel') {
    return html`${rect}<line class="inner" x1="${n.x + 8}" y1="${n.y}" x2="${n.x + 8}" y2="${n.y + n.height}"/><line class="inner" x1="${n.x + n.width - 8}" y1="${n.y}" x2="${n.x + n.width - 8}" y2="${n.y + n.height}"/>`;
  }
  if (n.kind === 'call') {
    return html`${rect}<rect class="inner" x="${n.x + 3}" y="${n.y + 3}" width="${Math.max(1, n.width - 6)}" height="${Math.max(1, n.height - 6)}" rx="4"/>`;
  }
  return rect;
}

function nodeSvg(n, marks) {
  const classes = ['node', `kind-${String(n.kind).replace(/[^a-z0-9-]/gi, '')}`, ...marks.nodeClasses(n)];
  const note = marks.nodeNote(n);
  const fill = marks.nodeFill(n);
  const cx = n.x + n.width / 2;
  // Circles and other small boxes are too narrow for text: it goes underneath.
  const below = n.width < 90 || (ROUND_KINDS.has(n.kind) && n.width < n.height * 1.3);
  // A diamond is narrower away from its middle line; a parallel box has inner bars.
  const inner = n.kind === 'switch' ? n.width * 0.72 : n.kind === 'parallel' ? n.width - 22 : n.width - 8;
  const room = below ? 220 : inner;
  const second = note ?? n.detail;
  const lines = [];
  const labelY = below ? n.y + n.height + 14 : n.y + n.height / 2 + (second ? -3 : 4);
  const outside = below ? ' outside' : '';
  lines.push(html`<text class="label${outside}" x="${cx}" y="${labelY}">${fitText(n.label ?? n.id, FONTS.label, room)}</text>`);
  if (second) {
    const cls = note ? 'heat' : 'detail';
    lines.push(html`<text class="${cls}${outside}" x="${cx}" y="${labelY + 14}">${fitText(second, FONTS[cls], room)}</text>`);
  }
  const title = [n.label ?? n.id, n.detail, note].filter(Boolean).join('\n');
  if (fill) classes.push('heated');
  return html`<g class="${classes.join(' ')}" data-node="${n.id}" data-kind="${n.kind}" style="${fill ? `--heat:${fill}` : ''}"><title>${title}</title>${nodeShape(n)}${lines}</g>`;
}

function edgeSvg(e, marks) {
  const points = e.points || [];
  if (points.length < 2) return { path: '', label: '' };
  const classes = ['edge', `edge-${String(e.kind).replace(/[^a-z0-9-]/gi, '')}`, ...marks.edgeClasses(e)];
  if (DASHED_EDGES.has(e.kind)) classes.push('dashed');
  const d = points.map((p, i) => `${i ? 'L' : 'M'}${p.x},${p.y}`).join(' ');
  const width = marks.edgeWidth(e);
  const style = width ? `stroke-width:${width}px` : '';
  const marker = classes.includes('taken') ? 'arrow-taken' : classes.includes('heat') ? 'arrow-heat' : 'arrow';
  const path = html`<path class="${classes.join(' ')}" data-from="${e.from}" data-to="${e.to}" d="${d}" style="${style}" marker-end="url(#${marker})"><title>${e.label || `${e.from} → ${e.to}`}</title></path>`;
  const text = marks.edgeLabel(e);
  if (!text) return { path, label: '' };
  // The server places labels where they do not cover nodes; the middle of
  // the line is the fallback for a layout without places.
  if (e.label_at) {
    const at = e.label_at;
    return { path, label: html`<text class="edge-label" x="${at.x}" y="${at.y}" text-anchor="start">${fitText(text, FONTS.edge, 190)}</text>` };
  }
  const mid = polylineMiddle(points);
  // Beside a vertical line, above a horizontal one: never on top of it.
  const label = mid.vertical
    ? html`<text class="edge-label" x="${mid.x + 6}" y="${mid.y + 3}" text-anchor="start">${fitText(text, FONTS.edge, 190)}</text>`
    : html`<text class="edge-label" x="${mid.x}" y="${mid.y - 5}" text-anchor="middle">${fitText(text, FONTS.edge, 190)}</text>`;
  return { path, label };
}

const noMarks = {
  nodeClasses: () => [],
  edgeClasses: () => [],
  nodeFill: () => null,
  nodeNote: () => null,
  edgeWidth: () => null,
  edgeLabel: (e) => e.label,
};

// The one renderer behind the instance, definition and heat-map pages; `marks`
// is what each page adds on top of the server's layout.
function diagramSvg(diagram, marks = {}) {
  const m = { ...noMarks, ...marks };
  const edges = (diagram.edges || []).map((e) => edgeSvg(e, m));
  const nodes = (diagram.nodes || []).map((n) => nodeSvg(n, m));
  const arrow = (id) => html`<marker id="${id}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>`;
  // A margin so that labels under the bottom nodes are not cut off.
  const width = Number(diagram.width) || 100;
  const height = (Number(diagram.height) || 100) + 24;
  // Drawn at its natural size (text as legible as the page's), shrunk only to fit a narrower box.
  return html`<svg id="diagram" class="diagram" viewBox="-8 -8 ${width + 16} ${height + 8}" style="max-width:${width + 16}px" preserveAspectRatio="xMidYMin meet" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="process diagram">
    <defs>${arrow('arrow')}${arrow('arrow-taken')}${arrow('arrow-heat')}</defs>
    <g class="edges">${edges.map((e) => e.path)}</g>
    <g class="nodes">${nodes}</g>
    <g class="edge-labels">${edges.map((e) => e.label)}</g>
  </svg>`;
}

// Compensation command ids are process/key/step/attempt[/compensate]; keys may
// contain "/", so the step is found from the end.
function commandStep(id) {
  const parts = String(id ?? '').split('/');
  if (parts[parts.length - 1] === 'compensate') parts.pop();
  if (/^\d+$/.test(parts[parts.length - 1] ?? '')) parts.pop();
  return parts.length >= 3 ? parts[parts.length - 1] : null;
}

// Marks each node of `path` as reached from the nearest earlier node that has
// an edge to it: a fork then reaches its branches from itself, and a join is
// reached from every branch it left.
function markPath(from, path, edgeSet, taken) {
  const groups = [from];
  for (const to of path) {
    for (let g = groups.length - 1; g >= 0; g -= 1) {
      const sources = groups[g].filter((s) => s !== to && edgeSet.has(edgeKey(s, to)));
      if (sources.length) {
        sources.forEach((s) => taken.add(edgeKey(s, to)));
        break;
      }
    }
    groups.push([to]);
  }
}

function instanceMarks(inst, diagram) {
  const nodes = diagram.nodes || [];
  const stepNode = new Map(nodes.filter((n) => n.step).map((n) => [n.step, n.id]));
  const nodeOf = (step) => stepNode.get(step) ?? step;
  const edgeSet = new Set((diagram.edges || []).map((e) => edgeKey(e.from, e.to)));
  const start = nodes.find((n) => n.kind === 'start');

  const current = new Set([...(inst.steps || []), ...(inst.tokens || []).map((t) => t.step)].map(nodeOf));
  const incident = new Set((inst.open_incidents || []).map((i) => nodeOf(i.step)));
  const done = new Set((inst.completed || []).map(nodeOf));
  const compensated = new Set();
  const taken = new Set();
  let begun = false;

  for (const entry of inst.history || []) {
    const effects = entry.effects || {};
    const before = (entry.before || []).map(nodeOf);
    const after = (entry.after || []).map(nodeOf);
    const entered = (effects.entered || []).map(nodeOf);
    entered.forEach((n) => done.add(n));
    after.forEach((n) => done.add(n));
    for (const c of effects.commands || []) {
      const step = c.purpose === 'compensation' && commandStep(c.id);
      if (step) compensated.add(nodeOf(step));
    }
    const left = before.filter((s) => !after.includes(s));
    const path = [...entered, ...after.filter((s) => !before.includes(s) && !entered.includes(s))];
    if (effects.ended) {
      const end = nodes.find((n) => n.kind === effects.ended) || nodes.find((n) => n.id === effects.ended);
      if (end) path.push(end.id);
    }
    const from = !begun && !before.length && start ? [start.id] : left;
    if (path.length) begun = true;
    markPath(from, path, edgeSet, taken);
  }

  return {
    nodeClasses(n) {
      const c = [];
      if (current.has(n.id)) c.push('current');
      if (incident.has(n.id)) c.push('incident');
      if (n.step && done.has(n.id)) c.push('done');
      if (compensated.has(n.id)) c.push('compensated');
      return c;
    },
    edgeClasses: (e) => (taken.has(edgeKey(e.from, e.to)) ? ['taken'] : []),
  };
}

// White → orange → red, so the slowest steps stand out at a glance.
function heatColor(t) {
  const stops = [[255, 255, 255], [253, 186, 116], [239, 68, 68]];
  const x = Math.max(0, Math.min(1, t)) * 2;
  const i = Math.min(1, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c.join(',')})`;
}

function heatMarks(heat) {
  const byNode = new Map((heat.nodes || []).map((n) => [n.node, n]));
  const byEdge = new Map((heat.edges || []).map((e) => [edgeKey(e.from, e.to), e.count]));
  const maxP95 = Math.max(1, ...[...byNode.values()].map((n) => n.p95_ms || 0));
  const maxCount = Math.max(1, ...byEdge.values());
  return {
    nodeFill(n) {
      const h = byNode.get(n.id);
      return h && h.p95_ms !== null && h.p95_ms !== undefined ? heatColor(h.p95_ms / maxP95) : null;
    },
    nodeNote(n) {
      const h = byNode.get(n.id);
      if (!h) return null;
      // Terminal nodes are entered but never left: they have no durations.
      const timed = h.p50_ms !== null && h.p50_ms !== undefined;
      return timed ? `${h.entered}× · p50 ${fmtMs(h.p50_ms)} · p95 ${fmtMs(h.p95_ms)}` : `${h.entered}×`;
    },
    edgeClasses: (e) => (byEdge.get(edgeKey(e.from, e.to)) ? ['heat'] : []),
    edgeWidth(e) {
      const count = byEdge.get(edgeKey(e.from, e.to)) || 0;
      return count ? 1.5 + (6 * count) / maxCount : null;
    },
    edgeLabel(e) {
      const count = byEdge.get(edgeKey(e.from, e.to));
      return count ? `${count}×` : '';
    },
  };
}

function diagramUrl(process, version) {
  return `/api/v1/definitions/${enc(process)}/${enc(version)}/diagram`;
}

// ---------------------------------------------------------------- overview

function sparkline(buckets) {
  const list = buckets || [];
  const max = Math.max(1, ...list.map((b) => Math.max(b.started || 0, b.ended || 0)));
  const h = 28;
  const step = 12;
  const bars = list.map((b, i) => {
    const s = ((b.started || 0) / max) * h;
    const e = ((b.ended || 0) / max) * h;
    const minute = b.minute ? new Date(b.minute) : null;
    const when = minute && !Number.isNaN(minute.getTime()) ? `${pad(minute.getHours())}:${pad(minute.getMinutes())}` : '';
    return html`<g><title>${when} — ${b.started || 0} started, ${b.ended || 0} ended</title>
      <rect class="started" x="${i * step}" y="${h - s}" width="5" height="${s}"/>
      <rect class="ended" x="${i * step + 5}" y="${h - e}" width="5" height="${e}"/>
      <rect class="hit" x="${i * step}" y="0" width="${step}" height="${h}"/></g>`;
  });
  return html`<svg class="spark" width="${Math.max(1, list.length) * step}" height="${h + 1}" viewBox="0 0 ${Math.max(1, list.length) * step} ${h + 1}"><line class="base" x1="0" y1="${h + 0.5}" x2="${list.length * step}" y2="${h + 0.5}"/>${bars}</svg>`;
}

// Compensated instances are failed ones, so that count links to "failed".
const OVERVIEW_COUNTS = [
  ['running', 'active'], ['completed', 'completed'], ['failed', 'failed'],
  ['compensated', 'failed'], ['cancelled', 'cancelled'],
];

function overviewTable(data) {
  const rows = (data.processes || []).map((p) => {
    const counts = OVERVIEW_COUNTS.map(([field, status]) => html`<td class="num"><a href="${href(['instances'], { process: p.process, version: p.version, status })}">${p[field] ?? 0}</a></td>`);
    return html`<tr data-process="${p.process}" data-version="${p.version}">
      <td><a href="${href(['definition', p.process, p.version])}">${p.process}</a></td>
      <td class="num">v${p.version}</td>
      ${counts}
      <td class="num"><a class="${p.incidents ? 'count-bad' : ''}" href="#/incidents">${p.incidents ?? 0}</a></td>
      <td>${sparkline(p.throughput)}</td>
    </tr>`;
  });
  if (!rows.length) return html`<p class="empty">No process is deployed yet.</p>`;
  return html`<table class="grid">
    <thead><tr><th>Process</th><th class="num">Version</th><th class="num">Running</th><th class="num">Completed</th>
      <th class="num">Failed</th><th class="num">Compensated</th><th class="num">Cancelled</th><th class="num">Incidents</th>
      <th>Per minute, last ${data.window_minutes ?? 15} min <span class="legend"><i class="started"></i>started <i class="ended"></i>ended</span></th></tr></thead>
    <tbody>${rows}</tbody></table>`;
}

async function overviewPage(ctx) {
  setMain(html`<section id="page-overview">
    <div class="page-head"><h1>Overview</h1><span class="muted">refreshes every 5 s</span></div>
    <div id="overview-unreachable"></div>
    <div class="card flush" id="overview-table"><p class="empty">Loading…</p></div>
  </section>`);
  const load = async () => {
    const data = await api('/api/v1/overview?window_minutes=15');
    if (!ctx.live) return;
    renderInto('#overview-unreachable', unreachableNote(data.unreachable));
    renderInto('#overview-table', overviewTable(data));
  };
  ctx.every(5000, load);
  await load();
}

// ---------------------------------------------------------------- instances

function readFilters(params) {
  const filters = {};
  for (const name of INSTANCE_FILTERS) {
    const value = params.get(name);
    if (value) filters[name] = value;
  }
  return filters;
}

// The job API wants typed values and only the filters that are set.
function jobFilter(filters) {
  const f = { ...filters };
  if (f.version !== undefined) f.version = Number(f.version);
  if (f.incident !== undefined) f.incident = f.incident === 'true';
  return f;
}

function options(values, selected, anyLabel = 'any') {
  return [html`<option value="">${anyLabel}</option>`, ...values.map((v) => html`<option value="${v}" ${String(v) === String(selected ?? '') ? 'selected' : ''}>${v}</option>`)];
}

function filterForm(f) {
  return html`<form id="filters" class="card filters" autocomplete="off">
    <label>Process <select name="process">${options(f.process ? [f.process] : [], f.process)}</select></label>
    <label>Version <input name="version" type="number" min="1" value="${f.version ?? ''}"></label>
    <label>Status <select name="status">${options(STATUSES, f.status)}</select></label>
    <label>Step <input name="step" type="text" value="${f.step ?? ''}"></label>
    <label>Incident <select name="incident">${options(['true', 'false'], f.incident)}</select></label>
    <label class="wide">Key <input name="key_prefix" type="search" placeholder="search by key" value="${f.key_prefix ?? ''}"></label>
    <span class="break"></span>
    <label>Started after <input name="started_after" type="datetime-local" value="${toLocalInput(f.started_after)}"></label>
    <label>Started before <input name="started_before" type="datetime-local" value="${toLocalInput(f.started_before)}"></label>
    <div class="filter-buttons"><button type="submit" class="primary">Apply</button><a class="button ghost-dark" href="#/instances">Reset</a></div>
  </form>`;
}

function instanceRows(list) {
  if (!list.length) return html`<tr><td colspan="8" class="empty">No instance matches.</td></tr>`;
  return list.map((i) => html`<tr data-instance="${i.id}">
    <td class="mono"><a href="${instanceHref(i.process, i.key)}">${i.key}</a></td>
    <td>${i.process} <span class="muted">v${i.version}</span></td>
    <td>${statusBadge(i.status)}</td>
    <td class="mono">${(i.steps || []).join(', ') || html`<span class="muted">—</span>`}</td>
    <td class="num">${i.incidents ? html`<span class="count-bad">${i.incidents}</span>` : 0}</td>
    <td>${fmtTime(i.started_at)}</td><td>${fmtTime(i.updated_at)}</td><td>${fmtTime(i.ended_at)}</td>
  </tr>`);
}

function jobText(job) {
  const errors = job.errors || [];
  return html`Job <span class="mono">${job.id}</span>: applied ${job.applied ?? 0} of ${job.matched ?? 0}
    <span class="muted">(published ${job.published ?? 0})</span> · ${job.state}
    ${errors.length ? html`<ul class="errors">${errors.slice(0, 20).map((e) => html`<li>${typeof e === 'string' ? e : compactJson(e)}</li>`)}</ul>` : ''}`;
}

async function instancesPage(ctx, _parts, params) {
  const filters = readFilters(params);
  const bulk = isOperator()
    ? html`<div class="bulk"><button type="button" id="bulk-retry">Retry incidents…</button><button type="button" id="bulk-cancel" class="danger">Cancel…</button></div>`
    : '';
  setMain(html`<section id="page-instances">
    <div class="page-head"><h1>Instances</h1></div>
    ${filterForm(filters)}
    <div class="toolbar"><span id="match-count" class="muted">counting…</span>${bulk}</div>
    <div id="job-progress" class="notice" hidden></div>
    <div class="card flush"><table class="grid">
      <thead><tr><th>Key</th><th>Process</th><th>Status</th><th>Steps</th><th class="num">Incidents</th><th>Started</th><th>Updated</th><th>Ended</th></tr></thead>
      <tbody id="instance-rows"><tr><td colspan="8" class="empty">Loading…</td></tr></tbody>
    </table></div>
    <div class="pager"><button type="button" id="prev-page" disabled>← Previous page</button><button type="button" id="next-page" disabled>Next page →</button></div>
  </section>`);

  const root = $('#page-instances');
  const form = $('#filters');
  let cursor = null;
  let next = null;
  const back = [];

  const load = async () => {
    const qs = new URLSearchParams({ ...filters, limit: '50' });
    if (cursor) qs.set('after', cursor);
    const [list, count] = await Promise.all([
      api(`/api/v1/instances?${qs}`),
      api(`/api/v1/instances/count?${new URLSearchParams(filters)}`),
    ]);
    if (!ctx.live) return;
    next = list.next ?? null;
    renderInto('#instance-rows', instanceRows(list.instances || []));
    $('#match-count').textContent = `${count.count} instance${count.count === 1 ? '' : 's'} match`;
    $('#prev-page').disabled = back.length === 0;
    $('#next-page').disabled = !next;
  };

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    const data = new FormData(form);
    const chosen = {};
    for (const name of INSTANCE_FILTERS) {
      const raw = String(data.get(name) ?? '').trim();
      chosen[name] = name.startsWith('started_') ? fromLocalInput(raw) : raw;
    }
    navigate(href(['instances'], chosen));
  });
  $('#next-page').addEventListener('click', () => {
    if (!next) return;
    back.push(cursor);
    cursor = next;
    guard(load);
  });
  $('#prev-page').addEventListener('click', () => {
    if (!back.length) return;
    cursor = back.pop();
    guard(load);
  });
  root.addEventListener('click', (e) => {
    const button = e.target.closest('#bulk-retry, #bulk-cancel');
    if (!button) return;
    guard(() => bulkAction(ctx, button.id === 'bulk-cancel' ? 'cancel' : 'retry', filters, async () => {
      cursor = null;
      back.length = 0;
      await load();
    }));
  });

  // The process list is a nicety: the page works without it.
  guard(async () => {
    const defs = await api('/api/v1/definitions');
    if (!ctx.live) return;
    const names = [...new Set((defs.definitions || []).map((d) => d.process))].sort();
    if (filters.process && !names.includes(filters.process)) names.push(filters.process);
    form.elements.process.innerHTML = piece(options(names, filters.process));
  });
  await load();
}

async function bulkAction(ctx, action, filters, reload) {
  const progress = $('#job-progress');
  const { count } = await api(`/api/v1/instances/count?${new URLSearchParams(filters)}`);
  if (!ctx.live) return;
  const noun = `${count} instance${count === 1 ? '' : 's'}`;
  const answer = await confirmDialog({
    title: action === 'cancel' ? 'Cancel instances' : 'Retry incidents',
    text: action === 'cancel'
      ? `Cancel ${noun}? Every instance that matches the current filters is cancelled.`
      : `Retry ${noun}? Every open incident of the instances that match the current filters is retried.`,
    compensate: action === 'cancel',
  });
  if (!answer || !ctx.live) return;
  const body = {
    filter: jobFilter(filters),
    action: action === 'cancel' ? { action: 'cancel', compensate: answer.compensate } : { action: 'retry' },
    reason: answer.reason,
  };
  let job = await api('/api/v1/jobs', { method: 'POST', body });
  progress.hidden = false;
  renderInto(progress, jobText(job));
  while (job.state !== 'completed' && job.state !== 'unconfirmed') {
    await ctx.sleep(1000);
    job = await api(`/api/v1/jobs/${enc(job.id)}`);
    if (!ctx.live) return;
    renderInto(progress, jobText(job));
  }
  await reload();
}

// ---------------------------------------------------------------- instance

function inputCell(input) {
  const { kind, ...rest } = input || {};
  const tag = html`<span class="tag tag-${String(kind ?? '').replace(/[^a-z]/gi, '')}">${kind ?? '?'}</span>`;
  if (kind === 'event') {
    return html`${tag} <span class="mono">${rest.type}</span> <span class="muted mono small">${rest.id}</span>`;
  }
  if (kind === 'timer') {
    return html`${tag} <span class="mono">${typeof rest.timer === 'string' ? rest.timer : compactJson(rest.timer)}</span>`;
  }
  if (kind === 'operator') {
    const action = rest.action && typeof rest.action === 'object' ? rest.action.action : rest.action;
    return html`${tag} <strong>${action}</strong> by ${rest.by ?? '?'}${rest.reason ? html`: <q>${rest.reason}</q>` : ''}`;
  }
  return html`${tag} <span class="mono small">${compactJson(rest)}</span>`;
}

function effectsCell(effects) {
  const e = effects || {};
  const out = [];
  for (const c of e.commands || []) {
    const purpose = c.purpose && c.purpose !== 'command' ? html` <span class="tag tag-${c.purpose.replace(/[^a-z]/gi, '')}">${c.purpose}</span>` : '';
    out.push(html`<div>→ <span class="mono">${c.type}</span>${purpose}</div>`);
  }
  for (const i of e.incidents || []) out.push(html`<div class="bad">incident ${i.id} at ${i.step}: ${i.reason}</div>`);
  for (const r of e.resolved || []) out.push(html`<div class="muted">resolved incident ${typeof r === 'object' ? r.id ?? compactJson(r) : r}</div>`);
  if ((e.variables || []).length) out.push(html`<div class="muted">set ${e.variables.join(', ')}</div>`);
  if ((e.timers || []).length) out.push(html`<div class="muted">${e.timers.length} timer${e.timers.length === 1 ? '' : 's'}</div>`);
  if (e.rejected) out.push(html`<div class="bad">rejected: ${compactJson(e.rejected)}</div>`);
  if ((e.dropped || []).length) out.push(html`<div class="muted">dropped ${compactJson(e.dropped)}</div>`);
  if (e.ended) out.push(html`<div>ended ${statusBadge(e.ended)}</div>`);
  return out;
}

function historyTable(history) {
  if (!history || !history.length) return html`<p class="empty">No audit entries.</p>`;
  const rows = history.map((h) => html`<tr>
    <td class="nowrap">${fmtTime(h.at)}</td>
    <td>${inputCell(h.input)}</td>
    <td class="mono">${(h.before || []).join(', ') || '∅'} → ${(h.after || []).join(', ') || '∅'}</td>
    <td>${effectsCell(h.effects)}</td>
  </tr>`);
  return html`<table class="grid compact"><thead><tr><th>Time</th><th>Input</th><th>Before → after</th><th>Effects</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function smallTable(items, columns, empty) {
  if (!items || !items.length) return html`<p class="muted small">${empty}</p>`;
  return html`<table class="grid compact"><thead><tr>${columns.map(([title]) => html`<th>${title}</th>`)}</tr></thead>
    <tbody>${items.map((item) => html`<tr>${columns.map(([, cell]) => html`<td>${cell(item)}</td>`)}</tr>`)}</tbody></table>`;
}

function incidentsCard(inst) {
  const list = inst.open_incidents || [];
  const items = list.map((i) => html`<li class="incident-item">
    <div><strong class="mono">${i.step}</strong> <span class="muted">#${i.id} · ${fmtTime(i.at)}</span></div>
    <div class="reason">${i.reason}</div>
    ${isOperator() ? html`<div class="buttons"><button type="button" class="retry primary" data-incident="${i.id}" data-step="${i.step}">Retry</button><button type="button" class="skip" data-incident="${i.id}" data-step="${i.step}">Skip</button></div>` : ''}
  </li>`);
  return html`<div class="card ${list.length ? 'card-bad' : ''}"><h2>Open incidents</h2>
    ${list.length ? html`<ul class="incidents">${items}</ul>` : html`<p class="muted small">None.</p>`}</div>`;
}

function sidePanel(inst) {
  const parent = inst.parent
    ? (typeof inst.parent === 'string' ? inst.parent : inst.parent.id ?? compactJson(inst.parent))
    : null;
  const parentLink = parent ? (() => {
    const p = splitInstanceId(parent);
    return html`<a class="mono" href="${instanceHref(p.process, p.key)}">${parent}</a>`;
  })() : html`<span class="muted">—</span>`;
  const canCancel = isOperator() && !ENDED.has(inst.status);
  return html`
    ${incidentsCard(inst)}
    <div class="card"><h2>Instance</h2><dl class="facts">
      <dt>Version</dt><dd><a href="${href(['definition', inst.process, inst.version])}">v${inst.version}</a>
        ${inst.definition && inst.definition.hash ? html` <span class="muted mono small" title="${inst.definition.hash}">${truncate(inst.definition.hash, 12)}</span>` : ''}</dd>
      <dt>Started</dt><dd>${fmtTime(inst.started_at)}</dd>
      <dt>Updated</dt><dd>${fmtTime(inst.updated_at)}</dd>
      <dt>Ended</dt><dd>${fmtTime(inst.ended_at)}</dd>
      <dt>Transitions</dt><dd>${inst.transitions ?? '—'}</dd>
      <dt>Shard</dt><dd>${inst.shard ?? '—'}</dd>
      <dt>Parent</dt><dd>${parentLink}</dd>
    </dl>
    ${canCancel ? html`<div class="buttons"><button type="button" id="cancel-instance" class="danger">Cancel instance…</button></div>` : ''}
    </div>
    <div class="card"><h2>Tokens</h2>${smallTable(inst.tokens, [
      ['Step', (t) => html`<span class="mono">${t.step}</span>`], ['Phase', (t) => t.phase], ['Attempt', (t) => t.attempt],
    ], 'None.')}</div>
    <div class="card"><h2>Variables</h2><pre class="json">${JSON.stringify(inst.vars ?? {}, null, 2)}</pre></div>
    <div class="card"><h2>Timers</h2>${smallTable(inst.timers, [
      ['Kind', (t) => t.kind], ['Due', (t) => fmtTime(t.due)], ['Id', (t) => html`<span class="mono small">${t.id}</span>`],
    ], 'None.')}</div>
    <div class="card"><h2>Buffered events</h2>${smallTable(inst.buffered, [
      ['Type', (b) => html`<span class="mono">${b.type}</span>`], ['Expires', (b) => fmtTime(b.expires)], ['Id', (b) => html`<span class="mono small">${b.id}</span>`],
    ], 'None.')}</div>`;
}

const DIAGRAM_LEGEND = html`<div class="legend diagram-legend"><i class="lg-current"></i>current <i class="lg-incident"></i>incident <i class="lg-done"></i>done <i class="lg-compensated"></i>compensated <i class="lg-taken"></i>path taken</div>`;

async function instancePage(ctx, [process = '', ...keyParts]) {
  const key = keyParts.join('/');
  const base = `/api/v1/instances/${enc(process)}/${enc(key)}`;
  setMain(html`<section id="page-instance">
    <div class="page-head"><h1><a href="${href(['instances'], { process })}">${process}</a> / <span class="mono">${key}</span></h1>
      <span id="instance-status" class="status">…</span><span id="instance-incidents"></span></div>
    <div id="action-outcome" class="notice" hidden></div>
    <div class="instance-grid">
      <div class="card diagram-card"><div id="diagram-box"><p class="empty">Loading…</p></div>${DIAGRAM_LEGEND}</div>
      <aside id="instance-side"></aside>
    </div>
    <div class="card"><h2>Audit trail</h2><div id="history"></div></div>
  </section>`);

  let diagram = null;
  let diagramVersion = null;
  let ended = false;

  const load = async () => {
    const inst = await api(`${base}?history=true`);
    if (!ctx.live) return;
    ended = ENDED.has(inst.status);
    const status = $('#instance-status');
    status.textContent = inst.status;
    status.className = `status status-${String(inst.status).replace(/[^a-z0-9-]/gi, '')}`;
    renderInto('#instance-side', sidePanel(inst));
    renderInto('#history', historyTable(inst.history));
    const version = (inst.definition && inst.definition.version) ?? inst.version;
    if (diagramVersion !== version) {
      diagram = await api(diagramUrl(inst.process, version));
      diagramVersion = version;
      if (!ctx.live) return;
    }
    renderInto('#diagram-box', diagramSvg(diagram, instanceMarks(inst, diagram)));
  };

  $('#page-instance').addEventListener('click', (e) => {
    const button = e.target.closest('button.retry, button.skip, #cancel-instance');
    if (button) guard(() => instanceAction(ctx, { base, key, button, reload: load }));
  });
  ctx.every(2000, async () => { if (!ended) await load(); });
  try {
    await load();
  } catch (err) {
    renderInto('#diagram-box', html`<p class="empty">Not available.</p>`);
    throw err;
  }
}

function numericId(value) {
  return /^\d+$/.test(value) ? Number(value) : value;
}

async function instanceAction(ctx, { base, key, button, reload }) {
  const action = button.id === 'cancel-instance' ? 'cancel' : button.classList.contains('retry') ? 'retry' : 'skip';
  const incident = numericId(button.dataset.incident);
  const step = button.dataset.step;
  const verb = { retry: 'Retry', skip: 'Skip', cancel: 'Cancel' }[action];
  const answer = await confirmDialog({
    title: `${verb} ${action === 'cancel' ? 'instance' : 'step'}`,
    text: action === 'cancel'
      ? `Cancel instance ${key}?`
      : action === 'retry'
        ? `Retry step ${step} of ${key} (incident #${incident})?`
        : `Skip step ${step} of ${key} (incident #${incident}) and carry on as if it had succeeded?`,
    compensate: action === 'cancel',
  });
  if (!answer || !ctx.live) return;
  const body = action === 'cancel'
    ? { action, compensate: answer.compensate, reason: answer.reason }
    : { action, incident, reason: answer.reason };
  const outcome = $('#action-outcome');
  const ack = await api(`${base}/actions`, { method: 'POST', body });
  outcome.hidden = false;
  outcome.className = 'notice';
  outcome.textContent = `${verb}: sent, waiting for the engine…`;
  let state = { state: 'pending' };
  // Bounded, so a lost request does not poll forever.
  for (let i = 0; i < 240 && state.state === 'pending'; i += 1) {
    await ctx.sleep(500);
    state = await api(`/api/v1/requests/${enc(ack.request)}`);
  }
  if (!ctx.live) return;
  const words = {
    applied: 'applied',
    repeated: 'already applied (repeated request)',
    refused: `refused${state.reason ? `: ${state.reason}` : ''}`,
    pending: 'still pending; the page refreshes when it lands',
  };
  outcome.className = `notice ${state.state === 'refused' ? 'notice-bad' : 'notice-ok'}`;
  outcome.textContent = `${verb}: ${words[state.state] ?? state.state}`;
  await reload();
}

// ---------------------------------------------------------------- incidents

function groupsTable(groups) {
  if (!groups.length) return html`<p class="empty">No open incident.</p>`;
  const rows = groups.map((g) => {
    const link = href(['instances'], { process: g.process, step: g.step, incident: 'true' });
    return html`<tr data-group="${g.process}/${g.step}">
      <td>${g.process} <span class="muted">v${g.version}</span></td>
      <td class="mono"><a class="group-link" href="${link}">${g.step}</a></td>
      <td class="num"><a class="count-bad" href="${link}">${g.count}</a></td>
      <td class="reason">${g.newest_reason}</td>
      <td class="nowrap">${fmtTime(g.newest_at)}</td>
    </tr>`;
  });
  return html`<table class="grid"><thead><tr><th>Process</th><th>Step</th><th class="num">Open</th><th>Newest reason</th><th>Newest at</th></tr></thead><tbody>${rows}</tbody></table>`;
}

function incidentList(incidents) {
  if (!incidents.length) return html`<p class="empty">No open incident.</p>`;
  const rows = incidents.map((i) => {
    const { process, key } = splitInstanceId(i.instance);
    return html`<tr>
      <td class="mono"><a data-instance="${i.instance}" href="${instanceHref(process, key)}">${i.instance}</a></td>
      <td class="mono">${i.step}</td><td class="num muted">#${i.id}</td>
      <td class="reason">${i.reason}</td><td class="nowrap">${fmtTime(i.at)}</td><td class="num">${fmtAge(i.age_seconds)}</td>
    </tr>`;
  });
  return html`<table class="grid"><thead><tr><th>Instance</th><th>Step</th><th class="num">Id</th><th>Reason</th><th>At</th><th class="num">Age</th></tr></thead><tbody>${rows}</tbody></table>`;
}

async function incidentsPage(ctx) {
  setMain(html`<section id="page-incidents">
    <div class="page-head"><h1>Incidents</h1><span class="muted">refreshes every 5 s</span></div>
    <div id="incidents-unreachable"></div>
    <h2 class="section">By process and step</h2>
    <div class="card flush" id="incident-groups"><p class="empty">Loading…</p></div>
    <h2 class="section">Newest</h2>
    <div class="card flush" id="incident-list"><p class="empty">Loading…</p></div>
  </section>`);
  const load = async () => {
    const [groups, newest] = await Promise.all([api('/api/v1/incidents/groups'), api('/api/v1/incidents?limit=50')]);
    if (!ctx.live) return;
    renderInto('#incidents-unreachable', unreachableNote(groups.unreachable));
    renderInto('#incident-groups', groupsTable(groups.groups || []));
    renderInto('#incident-list', incidentList(newest.incidents || []));
  };
  ctx.every(5000, load);
  await load();
}

// ---------------------------------------------------------------- definitions

function deployedCell(d) {
  if (!d.deployed_by && !d.deployed_at) return html`<span class="muted">configuration</span>`;
  return html`${d.deployed_by ?? '?'} <span class="muted">${fmtTime(d.deployed_at)}</span>`;
}

async function definitionsPage(ctx) {
  setMain(html`<section id="page-definitions">
    <div class="page-head"><h1>Definitions</h1></div>
    <div class="card flush" id="definition-table"><p class="empty">Loading…</p></div>
  </section>`);
  const { definitions = [] } = await api('/api/v1/definitions');
  if (!ctx.live) return;
  const byProcess = new Map();
  for (const d of definitions) {
    if (!byProcess.has(d.process)) byProcess.set(d.process, []);
    byProcess.get(d.process).push(d);
  }
  const rows = [...byProcess.keys()].sort().flatMap((process) => {
    const versions = byProcess.get(process).sort((a, b) => b.version - a.version);
    return versions.map((d, i) => html`<tr data-definition="${d.process}/${d.version}" class="${i === 0 ? 'group-start' : ''}">
      ${i === 0 ? html`<td rowspan="${versions.length}"><strong>${process}</strong></td>` : ''}
      <td><a href="${href(['definition', d.process, d.version])}">v${d.version}</a> ${d.latest ? html`<span class="tag">latest</span>` : ''}</td>
      <td class="num">${(d.steps || []).length}</td>
      <td class="num"><a href="${href(['instances'], { process: d.process, version: d.version })}">${d.instances ?? 0}</a></td>
      <td>${deployedCell(d)}</td>
      <td class="mono small muted" title="${d.hash ?? ''}">${truncate(d.hash ?? '', 14)}</td>
      <td><a href="${href(['heatmap', d.process, d.version])}">heat map</a></td>
    </tr>`);
  });
  renderInto('#definition-table', rows.length
    ? html`<table class="grid"><thead><tr><th>Process</th><th>Version</th><th class="num">Steps</th><th class="num">Instances</th><th>Deployed</th><th>Hash</th><th></th></tr></thead><tbody>${rows}</tbody></table>`
    : html`<p class="empty">No definition is deployed.</p>`);
}

function parseStepMapping(text) {
  const steps = {};
  for (const pair of String(text).split(',').map((s) => s.trim()).filter(Boolean)) {
    const eq = pair.indexOf('=');
    if (eq <= 0 || eq === pair.length - 1) throw new Error(`step mapping "${pair}" is not old=new`);
    steps[pair.slice(0, eq).trim()] = pair.slice(eq + 1).trim();
  }
  return steps;
}

function migrateResult(r) {
  const movable = r.movable || [];
  const blocked = r.blocked || [];
  return html`<p><strong>${movable.length}</strong> movable, <strong class="${blocked.length ? 'bad' : ''}">${blocked.length}</strong> blocked.</p>
    ${blocked.length ? html`<ul class="blocked">${blocked.slice(0, 100).map((b) => {
      const { process, key } = splitInstanceId(b.instance);
      return html`<li><a class="mono" href="${instanceHref(process, key)}">${b.instance}</a>: ${(b.reasons || []).join('; ')}</li>`;
    })}</ul>` : ''}`;
}

function migrateForm(current, versions) {
  const others = versions.filter((v) => v.version !== current).map((v) => v.version).sort((a, b) => b - a);
  return html`<div class="card"><h2>Migration dry run</h2>
    <form id="migrate" class="stack">
      <label>To version <select name="to" ${others.length ? '' : 'disabled'}>${others.map((v) => html`<option value="${v}">v${v}</option>`)}</select></label>
      <label>Step mappings <input name="steps" type="text" placeholder="old=new, old2=new2"></label>
      <button type="submit" id="migrate-dry-run" ${others.length ? '' : 'disabled'}>Dry run</button>
      ${others.length ? '' : html`<p class="muted small">There is no other version to migrate to.</p>`}
    </form>
    <div id="migrate-result"></div></div>`;
}

async function definitionPage(ctx, [process = '', version = '']) {
  const base = `/api/v1/definitions/${enc(process)}/${enc(version)}`;
  const [def, diagram, all] = await Promise.all([api(base), api(diagramUrl(process, version)), api('/api/v1/definitions')]);
  if (!ctx.live) return;
  const versions = (all.definitions || []).filter((d) => d.process === process).sort((a, b) => b.version - a.version);
  const current = Number(def.version ?? version);
  const versionRows = versions.map((d) => html`<tr class="${d.version === current ? 'selected' : ''}">
    <td><a href="${href(['definition', process, d.version])}">v${d.version}</a> ${d.latest ? html`<span class="tag">latest</span>` : ''}</td>
    <td class="num"><a href="${href(['instances'], { process, version: d.version })}">${d.instances ?? 0}</a></td>
    <td>${deployedCell(d)}</td></tr>`);
  setMain(html`<section id="page-definition">
    <div class="page-head"><h1>${process} <span class="muted">v${current}</span></h1>
      ${def.latest ? html`<span class="tag">latest</span>` : ''}
      <a class="button ghost-dark" href="${href(['heatmap', process, current])}">Heat map</a>
      <a class="button ghost-dark" href="${href(['instances'], { process, version: current })}">Instances</a></div>
    <div class="instance-grid">
      <div class="card diagram-card"><div id="diagram-box">${diagramSvg(diagram)}</div></div>
      <aside>
        <div class="card"><h2>Versions</h2><table class="grid compact"><thead><tr><th>Version</th><th class="num">Instances</th><th>Deployed</th></tr></thead><tbody>${versionRows}</tbody></table></div>
        ${isOperator() ? migrateForm(current, versions) : ''}
      </aside>
    </div>
    <div class="card"><h2>Source</h2><pre class="source">${def.source ?? ''}</pre></div>
  </section>`);

  const form = $('#migrate');
  if (!form) return;
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    guard(async () => {
      // A stale result next to a new error would read as the answer to it.
      renderInto('#migrate-result', html`<p class="muted">Checking…</p>`);
      try {
        const body = {
          process,
          from: current,
          to: Number(form.elements.to.value),
          steps: parseStepMapping(form.elements.steps.value),
          dry_run: true,
        };
        const result = await api('/api/v1/migrations', { method: 'POST', body });
        if (ctx.live) renderInto('#migrate-result', migrateResult(result));
      } catch (err) {
        renderInto('#migrate-result', '');
        throw err;
      }
    });
  });
}

// ---------------------------------------------------------------- heat map

async function heatmapPage(ctx, [process = '', version = ''], params) {
  const win = { from: params.get('from') || '', to: params.get('to') || '' };
  const qs = new URLSearchParams(Object.entries(win).filter(([, v]) => v));
  const [diagram, heat] = await Promise.all([
    api(diagramUrl(process, version)),
    api(`/api/v1/definitions/${enc(process)}/${enc(version)}/heatmap${qs.toString() ? `?${qs}` : ''}`),
  ]);
  if (!ctx.live) return;
  const maxP95 = Math.max(0, ...(heat.nodes || []).map((n) => n.p95_ms || 0));
  setMain(html`<section id="page-heatmap">
    <div class="page-head"><h1>${process} <span class="muted">v${version}</span> · heat map</h1>
      <a class="button ghost-dark" href="${href(['definition', process, version])}">Definition</a></div>
    <form id="window" class="card filters">
      <label>From <input name="from" type="datetime-local" value="${toLocalInput(heat.from || win.from)}"></label>
      <label>To <input name="to" type="datetime-local" value="${toLocalInput(heat.to || win.to)}"></label>
      <div class="filter-buttons"><button type="submit" class="primary">Show</button></div>
      <p class="muted summary">${heat.instances ?? 0} instances started between ${fmtTime(heat.from)} and ${fmtTime(heat.to)}.</p>
    </form>
    <div class="card diagram-card heat-card"><div id="diagram-box">${diagramSvg(diagram, heatMarks(heat))}</div>
      <div class="legend diagram-legend">p95 <span class="heat-scale"></span> 0 – ${fmtMs(maxP95)} · label: entered× · p50 · p95 · edge width: transitions</div></div>
  </section>`);
  const form = $('#window');
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    navigate(href(['heatmap', process, version], {
      from: fromLocalInput(form.elements.from.value),
      to: fromLocalInput(form.elements.to.value),
    }));
  });
}

// ---------------------------------------------------------------- start

function start() {
  $('#signin-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    const token = $('#token').value.trim();
    if (!token) return;
    const button = $('#sign-in');
    button.disabled = true;
    try {
      await signIn(token, true);
      $('#token').value = '';
    } catch (err) {
      showSignIn(err.message);
    } finally {
      button.disabled = false;
    }
  });
  $('#sign-out').addEventListener('click', () => signOut());
  window.addEventListener('hashchange', route);
  // Nothing may fail silently: a stray rejection still reaches the banner.
  window.addEventListener('unhandledrejection', (e) => showError(e.reason));

  if (session.token) {
    signIn(session.token, true).catch((err) => signOut(err.status === 401 ? err.message : `Could not sign in: ${err.message}`));
  } else {
    showSignIn();
  }
}

start();
