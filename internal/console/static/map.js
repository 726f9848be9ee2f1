// The map's layout and SVG drawing: spaces as boxes in rows, each app a
// node in its space's grid (a collapsed space is one box its apps'
// edges meet at), edges as curves with arrowheads. Every name goes in as
// a text node.

const ns = 'http://www.w3.org/2000/svg';

// svg makes an SVG element with attributes and, if given, text.
export function svg(tag, attrs, text) {
  const e = document.createElementNS(ns, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.appendChild(document.createTextNode(text));
  return e;
}

export const nodeW = 160;
export const nodeH = 26;
const gapX = 14;
const gapY = 10;
const head = 38;
const pad = 12;
const cols = 3;
const boxGap = 28;
const maxW = 1500;

// layout places the spaces (sorted), each with its apps (sorted), as the
// view filters them: by space, by a search of app names, collapsed or not.
// It returns the space boxes, each shown app's anchor (its node, or its
// collapsed space's box) and the drawing's size.
export function layout(spaces, appsBySpace, view) {
  const q = view.search.trim().toLowerCase();
  const boxes = [];
  const pos = new Map();
  let x = boxGap;
  let y = boxGap;
  let rowH = 0;
  let width = 0;
  for (const sp of spaces) {
    if (view.space && sp.guid !== view.space) continue;
    let apps = appsBySpace.get(sp.guid) || [];
    if (q) {
      apps = apps.filter((a) => a.name.toLowerCase().includes(q));
      if (apps.length === 0) continue;
    }
    const collapsed = view.collapsed.has(sp.guid);
    const n = Math.max(1, Math.min(cols, apps.length));
    const rows = Math.ceil(apps.length / n);
    const w = collapsed ? 2 * pad + nodeW : 2 * pad + n * nodeW + (n - 1) * gapX;
    const h = collapsed ? head + 10 : head + Math.max(rows, 1) * (nodeH + gapY) + pad - gapY;
    if (x + w > maxW && x > boxGap) {
      x = boxGap;
      y += rowH + boxGap;
      rowH = 0;
    }
    const box = { space: sp, x, y, w, h, apps, collapsed };
    boxes.push(box);
    apps.forEach((a, i) => {
      if (collapsed) {
        pos.set(a.guid, { x: x + w / 2, y: y + h / 2, hw: w / 2, hh: h / 2, anchor: 'space:' + sp.guid });
        return;
      }
      const nx = x + pad + (i % n) * (nodeW + gapX);
      const ny = y + head + Math.floor(i / n) * (nodeH + gapY);
      pos.set(a.guid, { x: nx + nodeW / 2, y: ny + nodeH / 2, nx, ny, hw: nodeW / 2, hh: nodeH / 2, anchor: a.guid });
    });
    x += w + boxGap;
    rowH = Math.max(rowH, h);
    width = Math.max(width, x);
  }
  return { boxes, pos, width: Math.max(width, 480), height: Math.max(y + rowH + boxGap, 240) };
}

// border is where the ray from anchor a's centre towards (tx, ty) leaves
// its rectangle.
function border(a, tx, ty) {
  const dx = tx - a.x;
  const dy = ty - a.y;
  if (dx === 0 && dy === 0) return { x: a.x, y: a.y };
  const t = Math.min(dx === 0 ? Infinity : a.hw / Math.abs(dx), dy === 0 ? Infinity : a.hh / Math.abs(dy));
  return { x: a.x + dx * t, y: a.y + dy * t };
}

// curve is an edge's path from anchor a to anchor b, bent by bend pixels
// to its right (so that a->b and b->a do not overlap), and the point for
// its label. An anchor to itself is a loop above it.
export function curve(a, b, bend) {
  if (a.anchor === b.anchor) {
    const r = 14 + bend;
    const x0 = a.x - 24;
    const x1 = a.x + 24;
    const y0 = a.y - a.hh;
    return { d: `M ${x0} ${y0} C ${x0 - 10} ${y0 - 2 * r} ${x1 + 10} ${y0 - 2 * r} ${x1} ${y0}`, lx: a.x, ly: y0 - 1.5 * r };
  }
  const mx = (a.x + b.x) / 2;
  const my = (a.y + b.y) / 2;
  const dx = b.x - a.x;
  const dy = b.y - a.y;
  const len = Math.hypot(dx, dy) || 1;
  const cx = mx - (dy / len) * bend;
  const cy = my + (dx / len) * bend;
  const p = border(a, cx, cy);
  const q = border(b, cx, cy);
  return { d: `M ${p.x} ${p.y} Q ${cx} ${cy} ${q.x} ${q.y}`, lx: (p.x + 2 * cx + q.x) / 4, ly: (p.y + 2 * cy + q.y) / 4 };
}

// truncate shortens a name to fit a node; the full name is in its title.
export function truncate(s, n) {
  const chars = Array.from(s);
  return chars.length <= n ? s : chars.slice(0, n - 1).join('') + '…';
}

// drawSpaces draws the space boxes and their (focusable) headers.
export function drawSpaces(layer, boxes) {
  const frag = document.createDocumentFragment();
  for (const b of boxes) {
    frag.appendChild(svg('rect', { class: 'space-box', x: b.x, y: b.y, width: b.w, height: b.h, rx: 6 }));
    const label = `${b.space.orgName} / ${b.space.name}`;
    const g = svg('g', {
      class: 'space-toggle', tabindex: 0, role: 'button', 'aria-expanded': String(!b.collapsed),
      'data-action': 'toggle-space', 'data-space': b.space.guid, 'data-key': 'space:' + b.space.guid,
      'aria-label': (b.collapsed ? 'expand space ' : 'collapse space ') + label,
    });
    g.appendChild(svg('rect', { class: 'space-box', x: b.x, y: b.y, width: b.w, height: head - 6, rx: 6 }));
    g.appendChild(svg('text', { class: 'space-title', x: b.x + 10, y: b.y + 15 }, (b.collapsed ? '▸ ' : '▾ ') + truncate(label, Math.max(8, Math.floor((b.w - 30) / 7.5)))));
    g.appendChild(svg('text', { class: 'space-sub', x: b.x + 10, y: b.y + 28 }, `${b.apps.length} app${b.apps.length === 1 ? '' : 's'}`));
    g.appendChild(svg('title', {}, label));
    frag.appendChild(g);
  }
  layer.replaceChildren(frag);
}

// drawNodes draws the apps of the expanded spaces.
export function drawNodes(layer, boxes, pos, search) {
  const q = search.trim().toLowerCase();
  const frag = document.createDocumentFragment();
  for (const b of boxes) {
    if (b.collapsed) continue;
    for (const a of b.apps) {
      const p = pos.get(a.guid);
      const g = svg('g', {
        class: q ? 'node match' : 'node', tabindex: 0, role: 'button', 'data-action': 'app', 'data-app': a.guid,
        'data-key': 'app:' + a.guid, 'aria-label': 'app ' + a.name,
      });
      g.appendChild(svg('rect', { x: p.nx, y: p.ny, width: nodeW, height: nodeH, rx: 4 }));
      g.appendChild(svg('text', { x: p.nx + 8, y: p.ny + 17 }, truncate(a.name, 24)));
      g.appendChild(svg('title', {}, a.name));
      frag.appendChild(g);
    }
  }
  layer.replaceChildren(frag);
}

// edgeElement is one focusable edge: a wide invisible stroke to click,
// the line and its label.
export function edgeElement(c, attrs, label, title, denied) {
  const g = svg('g', Object.assign({ tabindex: 0, role: 'button' }, attrs));
  g.appendChild(svg('path', { class: 'hit', d: c.d }));
  g.appendChild(svg('path', { class: 'line', d: c.d, 'marker-end': denied ? 'url(#arrow-denied)' : 'url(#arrow)' }));
  if (label) g.appendChild(svg('text', { x: c.lx + 3, y: c.ly - 3 }, label));
  g.appendChild(svg('title', {}, title));
  return g;
}
