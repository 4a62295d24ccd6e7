// k6 load test for goblet: the three requests of a v2 clone, repeated by each VU.
//
//   k6 run loadtest/k6-script.js            # run-local's HAProxy, demo-upstream's repos
//   GOBLET_URL=http://127.0.0.1:8080 REPOS=git.internal/org/a,git.internal/org/b \
//     ALLOW_REMOTE_UPSTREAM=1 k6 run loadtest/k6-script.js
//   docker compose -f loadtest/docker-compose.loadtest.yml --profile loadtest up k6
//
// Environment:
//   GOBLET_URL     path-prefix base URL (HAProxy or one goblet's prefix port)
//   REPOS          comma-separated host/org/repo list, spread over the VUs
//                  (default: loadtest/demo-upstream's, on 127.0.0.1:8443)
//   ALLOW_REMOTE_UPSTREAM  1: allow REPOS on another host than this machine
//   THINK_TIME_MS  pause after each clone (default 100)
//   DEPTH          > 0: shallow fetches (deepen N)
//   AUTH           user:password of a tenant (Basic); keep it out of shell history
//
// Every answer is checked as git would check it (k6-pktline.js): HTTP 200 with
// git's content type, valid pkt-lines, no ERR packet, no sideband error, a pack
// whose SHA-1 trailer matches. An ERR answer is a failure, never a success.
// Pick repositories on a git server you own: info/refs and ls-refs always
// reach the upstream (that is how goblet checks access), so a load test
// through goblet is also a load test of the upstream's ref advertisement.

import http from 'k6/http';
import { check, sleep } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import crypto from 'k6/crypto';
import encoding from 'k6/encoding';
import {
  ADVERTISEMENT_TYPE,
  RESULT_TYPE,
  checkFetch,
  checkInfoRefs,
  checkLsRefs,
  fetchBody,
  lsRefsBody,
} from './k6-pktline.js';

const DEMO_REPOS = [0, 1, 2].map((i) => '127.0.0.1:8443/demo/repo-' + i + '.git').join(',');
const BASE = (__ENV.GOBLET_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const REPOS = (__ENV.REPOS || DEMO_REPOS)
  .split(',')
  .map((r) => r.trim().replace(/^https:\/\//, '').replace(/\/+$/, ''))
  .filter((r) => r.length > 0);

// Every clone's info/refs and ls-refs reach the upstream: a forge that is not on
// this machine is loaded only when asked for, and then with a warning.
function hostOf(repo) {
  const authority = repo.split('/')[0];
  return authority.includes(':') ? authority.slice(0, authority.lastIndexOf(':')) : authority;
}
const REMOTE = [...new Set(REPOS.map(hostOf))].filter(
  (h) => h !== 'localhost' && !/^127\.\d+\.\d+\.\d+$/.test(h) && h !== '[::1]');
if (REMOTE.length > 0) {
  if (__ENV.ALLOW_REMOTE_UPSTREAM !== '1') {
    throw new Error('REPOS names ' + REMOTE.join(', ') + ', not this machine: every clone\'s ' +
      'ref requests would reach that forge. Load only a forge you own and say so with ' +
      'ALLOW_REMOTE_UPSTREAM=1');
  }
  console.warn('loading ' + REMOTE.join(', ') + ': every clone\'s ref requests reach it');
}
const THINK_S = Number(__ENV.THINK_TIME_MS || 100) / 1000;
const DEPTH = Number(__ENV.DEPTH || 0);
const AUTH = __ENV.AUTH ? 'Basic ' + encoding.b64encode(__ENV.AUTH) : null;

const gitValid = new Rate('git_valid');
const gitErrors = new Counter('git_errors');

export const options = {
  // The shape: 10 -> 50 -> 100 VUs, 2-minute ramps, 5-minute holds.
  // Shorten for a smoke run with k6's own flag, e.g. `k6 run --stage 20s:5 ...`.
  stages: [
    { duration: '2m', target: 10 },
    { duration: '5m', target: 10 },
    { duration: '2m', target: 50 },
    { duration: '5m', target: 50 },
    { duration: '2m', target: 100 },
    { duration: '5m', target: 100 },
    { duration: '2m', target: 0 },
  ],
  thresholds: {
    // Transport: under 1 % of requests may fail at all.
    http_req_failed: ['rate<0.01'],
    // Git: under 1 % of answers may be invalid git (ERR lines, cut packs...).
    git_valid: ['rate>0.99'],
    checks: ['rate>0.99'],
    // Ref requests go upstream (access check) and are small.
    'http_req_duration{kind:info_refs}': ['p(95)<1000'],
    'http_req_duration{kind:ls_refs}': ['p(95)<1000'],
    // Pack downloads grow with the repository: tune for yours.
    'http_req_duration{kind:fetch}': ['p(95)<5000', 'p(99)<10000'],
  },
};

function header(res, name) {
  const wanted = name.toLowerCase();
  for (const key of Object.keys(res.headers || {})) {
    if (key.toLowerCase() === wanted) return res.headers[key];
  }
  return '';
}

function params(kind, repo, post) {
  const headers = { 'Git-Protocol': 'version=2', 'User-Agent': 'git/2.39.5 (goblet-k6)' };
  if (post) {
    headers['Content-Type'] = 'application/x-git-upload-pack-request';
    headers.Accept = RESULT_TYPE;
  }
  if (AUTH) headers.Authorization = AUTH;
  return { headers, responseType: 'binary', timeout: '300s', tags: { kind, repo } };
}

function sha1hex(buffer) {
  return crypto.sha1(buffer, 'hex');
}

// Check one answer; returns the checker's result, or null after recording a failure.
function verify(res, kind, contentType, checker) {
  let result = null;
  let error = '';
  try {
    if (res.status !== 200) throw new Error('HTTP ' + res.status);
    const type = header(res, 'Content-Type').split(';')[0].trim();
    if (type !== contentType) throw new Error('content type ' + (type || 'none'));
    result = checker(new Uint8Array(res.body));
  } catch (e) {
    error = String(e.message || e);
  }
  const ok = error === '';
  gitValid.add(ok, { kind });
  check(res, { [kind + ': valid git answer']: () => ok });
  if (!ok) {
    gitErrors.add(1, { kind });
    console.warn(kind + ' ' + res.url + ': ' + error);
    return null;
  }
  return result === null ? {} : result;
}

export function setup() {
  const res = http.get(BASE + '/healthz', { tags: { kind: 'healthz' } });
  if (res.status !== 200) {
    throw new Error('goblet is not answering ' + BASE + '/healthz (status ' + res.status + ')');
  }
}

export default function () {
  const repo = REPOS[(__VU + __ITER) % REPOS.length];
  const url = BASE + '/' + repo;
  const refs = http.get(url + '/info/refs?service=git-upload-pack', params('info_refs', repo));
  if (verify(refs, 'info_refs', ADVERTISEMENT_TYPE, checkInfoRefs) !== null) {
    const ls = http.post(url + '/git-upload-pack', lsRefsBody(), params('ls_refs', repo, true));
    const listed = verify(ls, 'ls_refs', RESULT_TYPE, checkLsRefs);
    if (listed !== null) {
      const body = fetchBody([listed.tip], DEPTH);
      const pack = http.post(url + '/git-upload-pack', body, params('fetch', repo, true));
      verify(pack, 'fetch', RESULT_TYPE, (bytes) => checkFetch(bytes, sha1hex));
    }
  }
  sleep(THINK_S);
}
