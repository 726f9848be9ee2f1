// The console: login, the map of apps and policies, live flows from the
// controller's stream, and the panels that answer a click. Every name is
// inserted as text (textContent, text nodes), never as markup.

import * as api from './api.js';
import { layout, curve, drawSpaces, drawNodes, edgeElement } from './map.js';

const $ = (id) => document.getElementById(id);
const windowMs = 60 * 1000;
const refreshMs = 15 * 1000;
const maxLabelled = 500;

const state = {
  me: null,
  orgs: new Map(), // guid → name
  spaces: new Map(), // guid → {guid, name, org, orgName}
  apps: new Map(), // guid → {guid, name, space}
  spaceList: [],
  appsBySpace: new Map(),
  policies: [],
  // live: "src>dst" → flow events of the last minute, oldest first.
  live: new Map(),
  liveDirty: false,
  liveTimer: null,
  view: { search: '', space: '', collapsed: new Set() },
  lay: null,
  edges: new Map(), // data-key → edge
  stopStream: null,
};

// el makes an HTML element; string children become text nodes.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'onclick') e.addEventListener('click', v);
    else e.setAttribute(k, String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

const appName = (guid) => (state.apps.get(guid) || { name: guid }).name;
const ports = (p) => (p.destination.ports.start === p.destination.ports.end ? `${p.destination.ports.start}` : `${p.destination.ports.start}-${p.destination.ports.end}`);
const policyText = (p) => `${p.destination.protocol}/${ports(p)}`;

function setStatus(extra) {
  const parts = [`${state.apps.size} apps`, `${state.policies.length} policies`];
  if (state.streamState) parts.push('flows: ' + state.streamState);
  if (extra) parts.push(extra);
  $('status').textContent = parts.join(' · ');
}

// --- login -----------------------------------------------------------

function showLogin(message) {
  $('console').hidden = true;
  $('toolbar').hidden = true;
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('login-token').focus();
}

async function onLogin(e) {
  e.preventDefault();
  const tok = $('login-token').value.trim();
  const user = $('login-user').value.trim();
  const pw = $('login-password').value;
  $('login-error').textContent = '';
  try {
    if (tok) api.setToken(tok);
    else if (user && pw) api.setToken(await api.passwordLogin(user, pw));
    else throw new Error('give a token, or a user and password');
    $('login-token').value = '';
    $('login-password').value = '';
    await enter();
  } catch (err) {
    api.clearToken();
    showLogin('Login failed: ' + err.message);
  }
}

async function enter() {
  state.me = await api.call('GET', '/trellis/v1/console/me');
  $('who').textContent = state.me.admin ? `${state.me.name} (admin)` : `${state.me.name} (write: ${state.me.spaces.length} space${state.me.spaces.length === 1 ? '' : 's'})`;
  $('cells-button').hidden = !state.me.admin;
  await loadAll();
  $('login').hidden = true;
  $('toolbar').hidden = false;
  $('console').hidden = false;
  render();
  performance.mark('trellis-first-render');
  document.body.dataset.ready = 'true';
  state.stopStream = api.streamFlows(onFlow, (s) => {
    state.streamState = s;
    setStatus();
    if (s === 'unauthorized') showLogin('The token is no longer valid: log in again.');
  });
  setInterval(pruneLive, 1000);
  setInterval(refresh, refreshMs);
}

// refresh rereads the apps, spaces and policies (others change them too),
// and redraws the map if they changed.
async function refresh() {
  if (document.hidden || $('confirm').open) return;
  const before = signature();
  try {
    await loadAll();
  } catch (e) {
    if (e instanceof api.APIError && e.status === 401) showLogin('The token is no longer valid: log in again.');
    return;
  }
  if (signature() !== before) render();
}

function signature() {
  return [...state.spaces.keys()].join() + '|' + [...state.apps.values()].map((a) => a.guid + a.name + a.space).join() + '|' +
    state.policies.map((p) => p.source.id + p.destination.id + policyText(p)).join();
}

// --- data ------------------------------------------------------------

async function loadAll() {
  const [orgs, spaces, apps] = await Promise.all([
    api.call('GET', '/v3/organizations'),
    api.call('GET', '/v3/spaces'),
    api.call('GET', '/v3/apps'),
    loadPolicies(),
  ]);
  state.orgs = new Map(orgs.resources.map((o) => [o.guid, o.name]));
  state.spaces = new Map(spaces.resources.map((s) => {
    const org = s.relationships.organization.data.guid;
    return [s.guid, { guid: s.guid, name: s.name, org, orgName: state.orgs.get(org) || org }];
  }));
  state.apps = new Map(apps.resources.map((a) => [a.guid, { guid: a.guid, name: a.name, space: a.relationships.space.data.guid }]));
  state.spaceList = [...state.spaces.values()].sort((a, b) => a.orgName.localeCompare(b.orgName) || a.name.localeCompare(b.name));
  state.appsBySpace = new Map();
  for (const a of [...state.apps.values()].sort((x, y) => x.name.localeCompare(y.name))) {
    if (!state.appsBySpace.has(a.space)) state.appsBySpace.set(a.space, []);
    state.appsBySpace.get(a.space).push(a);
  }
  const sel = $('space-filter');
  const keep = sel.value;
  sel.replaceChildren(el('option', { value: '' }, 'all spaces'));
  for (const s of state.spaceList) sel.appendChild(el('option', { value: s.guid }, `${s.orgName} / ${s.name}`));
  sel.value = state.spaces.has(keep) ? keep : '';
}

async function loadPolicies() {
  const r = await api.call('GET', '/networking/v1/external/policies');
  state.policies = r.policies || [];
}

// canWrite: the caller may create and delete policies between the apps.
function canWrite(src, dst) {
  if (state.me.admin) return true;
  const a = state.apps.get(src);
  const b = state.apps.get(dst);
  return !!a && !!b && state.me.spaces.includes(a.space) && state.me.spaces.includes(b.space);
}

function covered(src, dst, proto, port) {
  return state.policies.some((p) => p.source.id === src && p.destination.id === dst && p.destination.protocol === proto &&
    p.destination.ports.start <= port && port <= p.destination.ports.end);
}

// --- drawing ---------------------------------------------------------

function render() {
  const t0 = performance.now();
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
  state.lay = layout(state.spaceList, state.appsBySpace, state.view);
  const map = $('map');
  map.setAttribute('width', state.lay.width);
  map.setAttribute('height', state.lay.height);
  map.setAttribute('viewBox', `0 0 ${state.lay.width} ${state.lay.height}`);
  drawSpaces($('layer-spaces'), state.lay.boxes);
  drawNodes($('layer-nodes'), state.lay.boxes, state.lay.pos, state.view.search);
  drawEdges();
  drawLive();
  refocus(focused);
  state.renderMs = performance.now() - t0;
  document.body.dataset.renderMs = state.renderMs.toFixed(1);
  setStatus(`drawn in ${state.renderMs.toFixed(0)} ms`);
}

function refocus(key) {
  if (!key) return;
  const e = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
  if (e) e.focus();
}

// drawEdges draws one edge per pair of anchors with policies between them.
function drawEdges() {
  const pos = state.lay.pos;
  const groups = new Map();
  for (const p of state.policies) {
    const a = pos.get(p.source.id);
    const b = pos.get(p.destination.id);
    if (!a || !b) continue;
    const key = 'policy:' + a.anchor + '>' + b.anchor;
    if (!groups.has(key)) groups.set(key, { key, kind: 'policy', a, b, policies: [] });
    groups.get(key).policies.push(p);
  }
  for (const [k, e] of state.edges) if (e.kind === 'policy') state.edges.delete(k);
  // Labels cost most of the drawing: with many edges on the map they are
  // left to each edge's tooltip and panel (search or filter to see them).
  const many = groups.size > maxLabelled;
  const frag = document.createDocumentFragment();
  for (const g of groups.values()) {
    state.edges.set(g.key, g);
    g.curve = curve(g.a, g.b, 14);
    const texts = [...new Set(g.policies.map(policyText))];
    const label = texts.slice(0, 2).join(', ') + (texts.length > 2 ? ` +${texts.length - 2}` : '');
    const first = g.policies[0];
    const title = g.policies.length === 1 ? `policy ${appName(first.source.id)} → ${appName(first.destination.id)} ${policyText(first)}` : `${g.policies.length} policies`;
    frag.appendChild(edgeElement(g.curve, { class: 'edge policy', 'data-action': 'edge', 'data-key': g.key, 'aria-label': title }, many ? '' : label, title, false));
  }
  $('layer-edges').replaceChildren(frag);
}

function onFlow(f) {
  if (!f.src_app || !f.dst_app) return;
  const key = f.src_app + '>' + f.dst_app;
  if (!state.live.has(key)) state.live.set(key, []);
  state.live.get(key).push({ t: Date.now(), id: f.id, verdict: f.verdict, protocol: f.protocol, port: f.dst_port, reason: f.reason, cell: f.cell });
  state.liveDirty = true;
  if (!state.liveTimer) state.liveTimer = setTimeout(() => { state.liveTimer = null; drawLive(); }, 200);
}

function pruneLive() {
  const cut = Date.now() - windowMs;
  for (const [k, evs] of state.live) {
    let i = 0;
    while (i < evs.length && evs[i].t < cut) i++;
    if (i > 0) { evs.splice(0, i); state.liveDirty = true; }
    if (evs.length === 0) state.live.delete(k);
  }
  if (state.liveDirty) drawLive();
}

// drawLive draws the last minute's traffic: counts beside policy edges,
// and a dashed red edge for attempts denied with no policy.
function drawLive() {
  state.liveDirty = false;
  if (!state.lay) return;
  const focused = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.key : null;
  const pos = state.lay.pos;
  for (const [k, e] of state.edges) if (e.kind === 'denied') state.edges.delete(k);
  const frag = document.createDocumentFragment();
  const counts = new Map(); // policy edge key → {allowed, denied}
  for (const [key, evs] of state.live) {
    const [src, dst] = key.split('>');
    const a = pos.get(src);
    const b = pos.get(dst);
    if (!a || !b) continue;
    const pk = 'policy:' + a.anchor + '>' + b.anchor;
    const c = counts.get(pk) || { allowed: 0, denied: 0 };
    const refused = new Map(); // "proto/port" → events denied without a policy
    for (const ev of evs) {
      if (ev.verdict === 'allowed') c.allowed++;
      else c.denied++;
      if (ev.verdict === 'denied' && !covered(src, dst, ev.protocol, ev.port)) {
        const pp = `${ev.protocol}/${ev.port}`;
        if (!refused.has(pp)) refused.set(pp, []);
        refused.get(pp).push(ev);
      }
    }
    counts.set(pk, c);
    if (refused.size === 0) continue;
    const dk = 'denied:' + src + '>' + dst;
    const edge = { key: dk, kind: 'denied', src, dst, refused, curve: curve(a, b, 34) };
    state.edges.set(dk, edge);
    const texts = [...refused.entries()].map(([pp, list]) => `${pp} ×${list.length}`);
    const label = 'denied ' + texts.slice(0, 2).join(', ') + (texts.length > 2 ? ` +${texts.length - 2}` : '');
    const title = `denied: ${appName(src)} → ${appName(dst)} ${[...refused.keys()].join(', ')} (no policy)`;
    frag.appendChild(edgeElement(edge.curve, { class: 'edge denied', 'data-action': 'edge', 'data-key': dk, 'aria-label': title }, label, title, true));
  }
  for (const [pk, c] of counts) {
    const e = state.edges.get(pk);
    if (!e || e.kind !== 'policy') continue;
    const t = document.createElementNS('http://www.w3.org/2000/svg', 'text');
    t.setAttribute('x', e.curve.lx + 3);
    t.setAttribute('y', e.curve.ly + 10);
    t.setAttribute('font-size', '10');
    const ok = document.createElementNS('http://www.w3.org/2000/svg', 'tspan');
    ok.setAttribute('class', 'count-allowed');
    ok.textContent = `✓${c.allowed} `;
    const no = document.createElementNS('http://www.w3.org/2000/svg', 'tspan');
    no.setAttribute('class', 'count-denied');
    no.textContent = `✗${c.denied}`;
    t.append(ok, no);
    frag.appendChild(t);
  }
  $('layer-live').replaceChildren(frag);
  refocus(focused);
}

// --- panels ----------------------------------------------------------

function openPanel(title, ...content) {
  $('panel-body').replaceChildren(el('h2', {}, title), ...content);
  $('panel').hidden = false;
}

function closePanel() {
  $('panel').hidden = true;
  $('panel-body').replaceChildren();
}

function message(text, cls) { return el('p', { class: cls || 'message', role: 'status' }, text); }

async function explainBlock(src, dst, proto, port) {
  const q = new URLSearchParams({ source: src, destination: dst, protocol: proto, port: String(port) });
  try {
    const x = await api.call('GET', '/trellis/v1/explain?' + q.toString());
    return el('p', { class: 'explain ' + (x.allowed ? 'allowed' : 'denied'), 'data-explain': `${proto}/${port}` }, x.reason);
  } catch (e) {
    return message('explain: ' + e.message, 'error');
  }
}

function confirmDialog(text, yes) {
  return new Promise((resolve) => {
    const d = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-yes').textContent = yes;
    const done = (v) => { d.close(); resolve(v); };
    $('confirm-yes').onclick = () => done(true);
    $('confirm-no').onclick = () => done(false);
    d.oncancel = () => resolve(false);
    d.showModal();
    $('confirm-no').focus();
  });
}

function policyBody(src, dst, proto, start, end) {
  return { policies: [{ source: { id: src }, destination: { id: dst, protocol: proto, ports: { start, end } } }] };
}

async function openEdge(key, note) {
  const e = state.edges.get(key);
  if (!e) return;
  if (e.kind === 'denied') return openDenied(e, note);
  const blocks = [];
  if (note) blocks.push(note);
  for (const p of e.policies.slice(0, 50)) {
    const src = p.source.id;
    const dst = p.destination.id;
    blocks.push(el('h3', {}, `${appName(src)} → ${appName(dst)} ${policyText(p)}`));
    blocks.push(await explainBlock(src, dst, p.destination.protocol, p.destination.ports.start));
    const evs = state.live.get(src + '>' + dst) || [];
    const ok = evs.filter((x) => x.verdict === 'allowed').length;
    blocks.push(el('p', {}, `last minute: ${ok} allowed, ${evs.length - ok} denied`));
    if (canWrite(src, dst)) {
      blocks.push(el('div', { class: 'actions' }, el('button', {
        type: 'button', class: 'danger', 'data-action': 'remove-policy',
        onclick: () => removePolicy(p),
      }, `Remove ${policyText(p)}`)));
    }
  }
  if (e.policies.length > 50) blocks.push(el('p', {}, `and ${e.policies.length - 50} more`));
  openPanel(e.policies.length === 1 ? 'Policy' : `${e.policies.length} policies`, ...blocks);
}

async function openDenied(e, note) {
  const blocks = [];
  if (note) blocks.push(note);
  for (const [pp, evs] of e.refused) {
    const [proto, portText] = pp.split('/');
    const port = Number(portText);
    blocks.push(el('h3', {}, `${appName(e.src)} → ${appName(e.dst)} ${pp}: ${evs.length} denied in the last minute`));
    blocks.push(await explainBlock(e.src, e.dst, proto, port));
    const reasons = [...new Set(evs.map((x) => x.reason).filter(Boolean))];
    if (reasons.length) blocks.push(el('ul', {}, ...reasons.slice(0, 5).map((r) => el('li', {}, 'flow log: ' + r))));
    if (canWrite(e.src, e.dst) && (proto === 'tcp' || proto === 'udp') && port >= 1 && port <= 65535) {
      blocks.push(el('div', { class: 'actions' }, el('button', {
        type: 'button', class: 'primary', 'data-action': 'allow',
        onclick: () => allow(e.src, e.dst, proto, port),
      }, `Allow ${proto}/${port}`)));
    }
  }
  openPanel('Denied attempts', ...blocks);
}

async function allow(src, dst, proto, port) {
  try {
    await api.call('POST', '/networking/v1/external/policies', policyBody(src, dst, proto, port, port));
    await loadPolicies();
    render();
    const a = state.lay.pos.get(src);
    const b = state.lay.pos.get(dst);
    const note = message(`Created the policy ${appName(src)} → ${appName(dst)} ${proto}/${port}.`);
    if (a && b) await openEdge('policy:' + a.anchor + '>' + b.anchor, note);
    else openPanel('Policy created', note);
    const btn = document.querySelector('#panel [data-action="remove-policy"]');
    if (btn) btn.focus(); else $('panel-close').focus();
  } catch (err) {
    $('panel-body').appendChild(message('Allow failed: ' + err.message, 'error'));
  }
}

async function removePolicy(p) {
  const text = `Remove the policy ${appName(p.source.id)} → ${appName(p.destination.id)} ${policyText(p)}?`;
  if (!await confirmDialog(text, 'Remove')) return;
  try {
    await api.call('POST', '/networking/v1/external/policies/delete',
      policyBody(p.source.id, p.destination.id, p.destination.protocol, p.destination.ports.start, p.destination.ports.end));
    await loadPolicies();
    render();
    openPanel('Policy removed', message(`Removed the policy ${appName(p.source.id)} → ${appName(p.destination.id)} ${policyText(p)}.`));
    $('panel-close').focus();
  } catch (err) {
    $('panel-body').appendChild(message('Remove failed: ' + err.message, 'error'));
  }
}

function table(headers, rows) {
  return el('table', {}, el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', {}, h)))),
    el('tbody', {}, ...rows.map((r) => el('tr', {}, ...r.map((c) => el('td', {}, c))))));
}

function when(t) {
  if (!t) return 'unknown';
  const d = new Date(t);
  return isNaN(d) ? 'unknown' : d.toISOString().replace('.000Z', 'Z');
}

async function openApp(guid) {
  const a = state.apps.get(guid);
  if (!a) return;
  const sp = state.spaces.get(a.space);
  const [ins, routes, tls] = await Promise.all([
    api.call('GET', `/trellis/v1/console/apps/${encodeURIComponent(guid)}/instances`).catch((e) => e),
    api.call('GET', `/v3/apps/${encodeURIComponent(guid)}/routes`).catch((e) => e),
    api.call('GET', `/trellis/v1/apps/${encodeURIComponent(guid)}/tls`).catch((e) => e),
  ]);
  const blocks = [el('p', {}, `space ${sp ? sp.orgName + ' / ' + sp.name : a.space}`)];
  blocks.push(el('h3', {}, 'Instances'));
  if (ins instanceof Error) blocks.push(message(ins.message, 'error'));
  else if (ins.resources.length === 0) blocks.push(el('p', {}, 'no instances'));
  else blocks.push(table(['#', 'cell', 'overlay IP', 'state', 'certificate expires'],
    ins.resources.map((i) => [String(i.index), i.cell || '-', i.ip || '-', i.state, i.cert_not_after ? when(i.cert_not_after) : 'unknown'])));
  blocks.push(el('h3', {}, 'Routes'));
  if (routes instanceof Error) blocks.push(message(routes.message, 'error'));
  else if (routes.resources.length === 0) blocks.push(el('p', {}, 'no routes'));
  else blocks.push(el('ul', {}, ...routes.resources.map((r) => el('li', {}, r.url))));
  blocks.push(el('h3', {}, 'TLS on 61443'));
  if (tls instanceof Error) blocks.push(message(tls.message, 'error'));
  else blocks.push(el('p', {}, tls.require_client_cert ? 'client certificate required (mutual TLS)' : 'server TLS; no client certificate required'));
  for (const [title, list] of [['Policies out', state.policies.filter((p) => p.source.id === guid)], ['Policies in', state.policies.filter((p) => p.destination.id === guid)]]) {
    blocks.push(el('h3', {}, `${title} (${list.length})`));
    const items = list.slice(0, 100).map((p) => {
      const other = title === 'Policies out' ? p.destination.id : p.source.id;
      const label = title === 'Policies out' ? `→ ${appName(other)} ${policyText(p)}` : `${appName(other)} → ${policyText(p)}`;
      const from = state.lay.pos.get(p.source.id);
      const to = state.lay.pos.get(p.destination.id);
      if (!from || !to) return el('li', {}, label);
      return el('li', {}, el('button', { type: 'button', 'data-action': 'policy', onclick: () => openEdge('policy:' + from.anchor + '>' + to.anchor) }, label));
    });
    if (items.length) blocks.push(el('ul', {}, ...items));
  }
  openPanel(a.name, ...blocks);
}

async function openCells() {
  let cells;
  try {
    cells = await api.call('GET', '/trellis/v1/console/cells');
  } catch (e) {
    openPanel('Cells', message(e.message, 'error'));
    return;
  }
  const rows = cells.resources.map((c) => [c.name, c.healthy ? 'healthy' : 'unhealthy', c.enforcement ? 'on' : 'OFF',
    `${c.applied_revision ?? '?'} / ${c.desired_revision ?? '?'}`, c.underlay_ip, c.subnet, when(c.last_seen)]);
  openPanel('Cells', table(['cell', 'health', 'enforcement', 'applied / desired revision', 'underlay', 'subnet', 'last seen'], rows));
}

// --- wiring ----------------------------------------------------------

function activate(target) {
  const action = target.dataset.action;
  if (action === 'toggle-space') {
    const sp = target.dataset.space;
    if (state.view.collapsed.has(sp)) state.view.collapsed.delete(sp);
    else state.view.collapsed.add(sp);
    render();
  } else if (action === 'app') {
    openApp(target.dataset.app).then(() => $('panel-close').focus());
  } else if (action === 'edge') {
    openEdge(target.dataset.key).then(() => {
      const b = document.querySelector('#panel [data-action="allow"], #panel [data-action="remove-policy"]');
      (b || $('panel-close')).focus();
    });
  }
}

function actionTarget(e) {
  let t = e.target;
  while (t && t !== $('map')) {
    if (t.dataset && t.dataset.action) return t;
    t = t.parentNode;
  }
  return null;
}

function wire() {
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', () => {
    if (state.stopStream) state.stopStream();
    api.clearToken();
    location.reload();
  });
  $('search').addEventListener('input', (e) => { state.view.search = e.target.value; render(); });
  $('space-filter').addEventListener('change', (e) => { state.view.space = e.target.value; render(); });
  $('cells-button').addEventListener('click', () => openCells().then(() => $('panel-close').focus()));
  $('panel-close').addEventListener('click', closePanel);
  const map = $('map');
  map.addEventListener('click', (e) => { const t = actionTarget(e); if (t) activate(t); });
  map.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter' && e.key !== ' ') return;
    const t = actionTarget(e);
    if (t) { e.preventDefault(); activate(t); }
  });
}

async function start() {
  wire();
  if (!api.token()) {
    showLogin('');
    return;
  }
  try {
    await enter();
  } catch (e) {
    api.clearToken();
    showLogin(e.message);
  }
}

start();
