// The controller's API, called with the session's token in the
// Authorization header (never in a URL), and its live flow stream.

const tokenKey = 'trellis.token';

export function token() { return sessionStorage.getItem(tokenKey) || ''; }
export function setToken(t) { sessionStorage.setItem(tokenKey, t); }
export function clearToken() { sessionStorage.removeItem(tokenKey); }

// APIError is a refused or failed call: status and the API's message.
export class APIError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function errorMessage(data, fallback) {
  if (!data || typeof data !== 'object') return fallback;
  if (typeof data.error === 'string') return data.error_description ? data.error_description : data.error;
  if (Array.isArray(data.errors) && data.errors.length > 0 && data.errors[0].detail) return data.errors[0].detail;
  return fallback;
}

// call sends one API request and returns its decoded JSON answer.
export async function call(method, path, body) {
  const headers = { Authorization: 'Bearer ' + token(), Accept: 'application/json' };
  const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) throw new APIError(res.status, errorMessage(data, res.status + ' ' + res.statusText));
  return data;
}

// passwordLogin trades a user's name and password for an access token
// (the UAA password grant the cf CLI uses).
export async function passwordLogin(username, password) {
  const body = new URLSearchParams({ grant_type: 'password', client_id: 'cf', client_secret: '', username, password });
  const res = await fetch('/oauth/token', {
    method: 'POST', body, cache: 'no-store', credentials: 'omit',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded', Accept: 'application/json' },
  });
  let data = {};
  try { data = await res.json(); } catch { data = {}; }
  if (!res.ok || typeof data.access_token !== 'string') throw new APIError(res.status, errorMessage(data, 'login refused'));
  return data.access_token;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// parseEvents splits buffered server-sent-event text into complete events
// and the rest still to come.
export function parseEvents(buf) {
  const events = [];
  let i;
  while ((i = buf.indexOf('\n\n')) >= 0) {
    const block = buf.slice(0, i);
    buf = buf.slice(i + 2);
    const ev = { event: 'message', data: '', id: null };
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? '' : line.slice(c + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') ev.event = value;
      else if (field === 'data') ev.data += (ev.data ? '\n' : '') + value;
      else if (field === 'id') ev.id = value;
    }
    events.push(ev);
  }
  return { events, rest: buf };
}

// streamFlows follows GET /trellis/v1/flows/stream with fetch (EventSource
// cannot send the Authorization header), calling onFlow for each flow and
// onState with 'live', 'reconnecting' or 'unauthorized'; it reconnects
// from the last flow it saw when a stream ends. It returns a stop function.
export function streamFlows(onFlow, onState) {
  let after = null;
  let stopped = false;
  let ctrl = null;
  async function once() {
    ctrl = new AbortController();
    const q = after === null ? '' : '?after=' + encodeURIComponent(after);
    const res = await fetch('/trellis/v1/flows/stream' + q, {
      headers: { Authorization: 'Bearer ' + token(), Accept: 'text/event-stream' },
      signal: ctrl.signal, cache: 'no-store', credentials: 'omit',
    });
    if (!res.ok) throw new APIError(res.status, 'flow stream: ' + res.status);
    onState('live');
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      const parsed = parseEvents(buf);
      buf = parsed.rest;
      for (const ev of parsed.events) {
        if (ev.id !== null && /^[0-9]+$/.test(ev.id)) after = ev.id;
        if (ev.event !== 'flow' || !ev.data) continue;
        let flow = null;
        try { flow = JSON.parse(ev.data); } catch { flow = null; }
        if (flow) onFlow(flow);
      }
    }
  }
  (async () => {
    let backoff = 1000;
    while (!stopped) {
      try {
        await once();
        backoff = 1000;
      } catch (e) {
        if (stopped) return;
        if (e instanceof APIError && (e.status === 401 || e.status === 403)) {
          onState('unauthorized');
          return;
        }
        onState('reconnecting');
        await sleep(backoff);
        backoff = Math.min(backoff * 2, 15000);
      }
    }
  })();
  return () => {
    stopped = true;
    if (ctrl) ctrl.abort();
  };
}
