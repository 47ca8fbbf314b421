// Load test of logagg's ingest: realistic events with byte-for-byte re-sends, as the publisher
// (services/publisher/simulator.py) sends them, at a constant arrival rate.
//
//   API_KEY=lgk_... k6 run -e BASE_URL=http://127.0.0.1:8080 k6/publish.js
//
// Options (all -e NAME=value or environment variables, all optional):
//   BASE_URL    ingest address                                  http://127.0.0.1:8080
//   API_KEY     sent as `Authorization: Bearer`: publish scope  (none: AUTH=off)
//               for `publish`, publish and read for `mixed`;
//               better from the environment than -e, which `ps` shows
//   SCENARIO    publish | mixed | all (publish, then mixed)     all
//   RATE        events per second the writers send              1000
//   BATCH       events per POST /publish (1 to 1000)            100
//   DUPLICATES  share of events that re-send an earlier event   0.3
//   DURATION    length of each scenario                         30s
//   VUS         VUs allocated up front per scenario (max 2x)    10
//   READ_LIMIT  page size of GET /events in `mixed`             100
//   P95_MS      threshold on p(95) of every endpoint, ms        200
//   P99_MS      threshold on p(99) of every endpoint, ms        500
//   SUMMARY     file to write the end-of-test summary JSON to   (none)
//
// Scenarios: `publish` only writes; `mixed` writes at the same rate and, per batch, also reads a
// page of GET /events (following its cursor, tailing the store) and GET /stats. Every request
// carries the tag `endpoint` (publish, events, stats) besides k6's own `scenario` tag, and the
// thresholds target them. k6 exits 99 when a threshold fails.
//
// A re-send is the earlier event's JSON text sent again, never re-serialized. Only events of
// batches answered 202 become candidates for re-sends, and the counters logagg_events_sent,
// logagg_events_new and logagg_events_duplicate count accepted events only, so once the stack
// has drained: received == sent, unique_processed == new, duplicate_dropped == duplicate
// (on a fresh stack with nothing else publishing).

import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const AUTHORIZATION = __ENV.API_KEY ? { Authorization: `Bearer ${__ENV.API_KEY}` } : {};
const SCENARIO = __ENV.SCENARIO || 'all';
const RATE = positiveInt('RATE', 1000);
const BATCH = positiveInt('BATCH', 100);
const DUPLICATES = share('DUPLICATES', 0.3);
const DURATION = __ENV.DURATION || '30s';
const VUS = positiveInt('VUS', 10);
const READ_LIMIT = positiveInt('READ_LIMIT', 100);
const P95_MS = positiveInt('P95_MS', 200);
const P99_MS = positiveInt('P99_MS', 500);

if (BATCH > 1000) throw new Error(`BATCH must be 1 to 1000 (MAX_BATCH_EVENTS), not ${BATCH}`);
if (READ_LIMIT > 1000) throw new Error(`READ_LIMIT must be 1 to 1000, not ${READ_LIMIT}`);
const SELECTED = { publish: ['publish'], mixed: ['mixed'], all: ['publish', 'mixed'] }[SCENARIO];
if (!SELECTED) throw new Error(`SCENARIO must be publish, mixed or all, not ${SCENARIO}`);

const eventsSent = new Counter('logagg_events_sent');
const eventsNew = new Counter('logagg_events_new');
const eventsDuplicate = new Counter('logagg_events_duplicate');
const publishAccepted = new Rate('logagg_publish_accepted');

function positiveInt(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`${name} must be a whole number of at least 1, not ${raw}`);
  }
  return value;
}

function share(name, fallback) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!(value >= 0 && value < 1)) throw new Error(`${name} must be a share in [0, 1), not ${raw}`);
  return value;
}

function seconds(duration) {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(duration);
  if (!match) throw new Error(`DURATION must look like 500ms, 30s, 2m or 1h, not ${duration}`);
  return Number(match[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[match[2]];
}

// RATE events per second is RATE iterations (one batch each) per BATCH seconds.
function scenario(name, index) {
  return {
    executor: 'constant-arrival-rate',
    exec: name,
    rate: RATE,
    timeUnit: `${BATCH}s`,
    duration: DURATION,
    preAllocatedVUs: VUS,
    maxVUs: 2 * VUS,
    startTime: `${index * (seconds(DURATION) + 5)}s`, // one after the other, with a gap
    gracefulStop: '10s',
    tags: { workload: name },
  };
}

function thresholds() {
  const rules = {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    logagg_publish_accepted: ['rate>0.99'],
  };
  for (const name of SELECTED) {
    rules[`http_req_duration{scenario:${name},endpoint:publish}`] =
        [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
    rules[`http_req_failed{scenario:${name}}`] = ['rate<0.01'];
  }
  if (SELECTED.includes('mixed')) {
    for (const endpoint of ['events', 'stats']) {
      rules[`http_req_duration{scenario:mixed,endpoint:${endpoint}}`] =
          [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
    }
  }
  return rules;
}

export const options = {
  scenarios: Object.fromEntries(SELECTED.map((name, i) => [name, scenario(name, i)])),
  thresholds: thresholds(),
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)', 'p(99)', 'count'],
  discardResponseBodies: false,
};

// --- the workload, after services/publisher/simulator.py ---------------------------------------

const TOPICS = ['auth', 'billing', 'orders', 'search', 'payments'];
const SERVICES = {
  auth: ['login', 'token', 'session'],
  billing: ['invoice', 'ledger'],
  orders: ['cart', 'checkout', 'fulfilment'],
  search: ['query', 'indexer'],
  payments: ['card', 'refund', 'payout'],
};
const LEVELS = [['DEBUG', 15], ['INFO', 70], ['WARN', 10], ['ERROR', 5]];
const MESSAGES = {
  DEBUG: ['cache lookup', 'connection reused', 'feature flag evaluated'],
  INFO: ['request completed', 'user signed in', 'record updated', 'job scheduled'],
  WARN: ['slow upstream response', 'retrying upstream call', 'rate limit near'],
  ERROR: ['upstream timed out', 'validation failed', 'database deadlock detected'],
};
const HISTORY = 5000; // accepted events this VU may re-send

const sent = []; // JSON text of this VU's accepted events (a ring of HISTORY)
let sentNext = 0;

function pick(items) {
  return items[Math.floor(Math.random() * items.length)];
}

function level() {
  let roll = Math.random() * 100;
  for (const [name, weight] of LEVELS) {
    roll -= weight;
    if (roll < 0) return name;
  }
  return 'INFO';
}

function lognormal(mu, sigma) {
  const u = 1 - Math.random();
  const z = Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * Math.random());
  return Math.exp(mu + sigma * z);
}

function newEvent() {
  const topic = pick(TOPICS);
  const lvl = level();
  return JSON.stringify({
    topic,
    event_id: crypto.randomUUID(),
    timestamp: new Date().toISOString(),
    source: `svc-${pick(SERVICES[topic])}-${1 + Math.floor(Math.random() * 4)}`,
    payload: {
      level: lvl,
      message: pick(MESSAGES[lvl]),
      latency_ms: Math.round(lognormal(3.0, 0.9) * 100) / 100,
      user: `user-${String(Math.floor(Math.random() * 5000)).padStart(4, '0')}`,
    },
  });
}

// One batch: each event is, with probability DUPLICATES, the bytes of an event sent before
// (accepted earlier, or earlier in this batch), else a new one.
function batch() {
  const texts = [];
  let fresh = 0;
  for (let i = 0; i < BATCH; i++) {
    const earlier = sent.length + texts.length;
    if (earlier > 0 && Math.random() < DUPLICATES) {
      const j = Math.floor(Math.random() * earlier);
      texts.push(j < sent.length ? sent[j] : texts[j - sent.length]);
    } else {
      texts.push(newEvent());
      fresh++;
    }
  }
  return { texts, fresh };
}

function remember(texts) {
  for (const text of texts) {
    if (sent.length < HISTORY) sent.push(text);
    else sent[sentNext] = text;
    sentNext = (sentNext + 1) % HISTORY;
  }
}

// --- requests -----------------------------------------------------------------------------------

function publishBatch() {
  const { texts, fresh } = batch();
  const response = http.post(`${BASE_URL}/publish`, `[${texts.join(',')}]`, {
    headers: { 'Content-Type': 'application/json', ...AUTHORIZATION },
    tags: { endpoint: 'publish', name: 'POST /publish' },
  });
  const accepted = response.status === 202 && jsonField(response, 'accepted') === texts.length;
  check(response, { 'publish answered 202 with every event accepted': () => accepted },
        { endpoint: 'publish' });
  publishAccepted.add(accepted, { endpoint: 'publish' });
  if (accepted) {
    // A re-send of an event first sent in this very batch is still a duplicate of it.
    remember(texts);
    eventsSent.add(texts.length);
    eventsNew.add(fresh);
    eventsDuplicate.add(texts.length - fresh);
  }
}

function jsonField(response, field) {
  try {
    return response.json(field);
  } catch (error) {
    return undefined;
  }
}

let cursor = null; // this VU's place in GET /events: the last `next` it was handed

function readPage() {
  const query = `limit=${READ_LIMIT}` + (cursor ? `&after=${encodeURIComponent(cursor)}` : '');
  const response = http.get(`${BASE_URL}/events?${query}`, {
    headers: AUTHORIZATION,
    tags: { endpoint: 'events', name: 'GET /events' },
  });
  let page = null;
  try {
    page = response.json();
  } catch (error) {
    page = null;
  }
  const ok = response.status === 200 && page !== null && Array.isArray(page.events) &&
      page.events.length <= READ_LIMIT && (page.next === null || typeof page.next === 'string');
  const keys = ok ? new Set(page.events.map((e) => `${e.topic}\u0000${e.event_id}`)) : null;
  check(response, {
    'events answered 200 with a page': () => ok,
    'events page holds each key once': () => ok && keys.size === page.events.length,
  }, { endpoint: 'events' });
  // A full page hands out the next cursor; a short one means we are at the end: stay and tail.
  if (ok && page.next) cursor = page.next;
}

function readStats() {
  const response = http.get(`${BASE_URL}/stats`, {
    headers: AUTHORIZATION,
    tags: { endpoint: 'stats', name: 'GET /stats' },
  });
  let stats = null;
  try {
    stats = response.json();
  } catch (error) {
    stats = null;
  }
  check(response, {
    'stats answered 200 with the counters': () => response.status === 200 && stats !== null &&
        ['received', 'unique_processed', 'duplicate_dropped', 'dead_lettered', 'pending']
            .every((name) => Number.isInteger(stats[name])),
  }, { endpoint: 'stats' });
}

export function publish() {
  publishBatch();
}

export function mixed() {
  publishBatch();
  readPage();
  readStats();
}

export default publish;

// --- end of test --------------------------------------------------------------------------------

function metricValue(data, name, stat) {
  const metric = data.metrics[name];
  return metric && metric.values && metric.values[stat] !== undefined ? metric.values[stat] : null;
}

function ms(value) {
  return value === null ? '-' : `${value.toFixed(1)}ms`;
}

function summaryText(data) {
  const lines = [`logagg k6 load test against ${BASE_URL}: ${SELECTED.join(', ')}`];
  const count = (name) => metricValue(data, name, 'count') || 0;
  const failed = metricValue(data, 'http_req_failed', 'rate');
  lines.push(`  events accepted ${count('logagg_events_sent')} ` +
      `(new ${count('logagg_events_new')}, duplicates ${count('logagg_events_duplicate')}); ` +
      `requests ${count('http_reqs')}, failed ${failed === null ? '-' :
        (100 * failed).toFixed(2) + '%'}`);
  for (const name of SELECTED) {
    const endpoints = name === 'mixed' ? ['publish', 'events', 'stats'] : ['publish'];
    for (const endpoint of endpoints) {
      const metric = `http_req_duration{scenario:${name},endpoint:${endpoint}}`;
      lines.push(`  ${name}/${endpoint}: p(95) ${ms(metricValue(data, metric, 'p(95)'))}, ` +
          `p(99) ${ms(metricValue(data, metric, 'p(99)'))}, ` +
          `max ${ms(metricValue(data, metric, 'max'))}`);
    }
  }
  const broken = [];
  for (const [name, metric] of Object.entries(data.metrics)) {
    for (const [rule, result] of Object.entries(metric.thresholds || {})) {
      if (!result.ok) broken.push(`${name}: ${rule}`);
    }
  }
  lines.push(broken.length ? `  thresholds FAILED: ${broken.join('; ')}` : '  thresholds held');
  return lines.join('\n') + '\n';
}

export function handleSummary(data) {
  const out = { stdout: summaryText(data) };
  if (__ENV.SUMMARY) out[__ENV.SUMMARY] = JSON.stringify(data, null, 2);
  return out;
}
