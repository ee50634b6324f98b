/**
 * The local teacher server's lifecycle and front door: it checks the options, wires the units (counters, hold gate,
 * faults, the chat and batch routes), listens on 127.0.0.1, dispatches each request to its route, turns a route's
 * error into OpenAI's error reply, and closes everything it started. The units hold the behaviour; this file only
 * decides who talks to whom.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

import { BatchService } from './batch/service';
import { ChatRoute } from './chat-route';
import { RequestCounters } from './counters';
import { FaultInjector } from './faults';
import { HoldGate } from './hold-gate';
import { HttpError, sendJson } from './http';
import { resolveOptions } from './options';
import type { FaultPlan, LocalTeacherServer, LocalTeacherServerOptions } from './types';

/** The routes a request may reach. */
interface Routes {
  model: string;
  chat: ChatRoute;
  batches: BatchService;
}

/**
 * Starts the server and resolves once it is listening.
 * @throws InputError when an option is out of range.
 */
export async function startLocalTeacherServer(opts: LocalTeacherServerOptions = {}): Promise<LocalTeacherServer> {
  const config = resolveOptions(opts);
  const counters = new RequestCounters();
  const gate = new HoldGate((held) => counters.setHeld(held));
  const faults = new FaultInjector();
  const chat = new ChatRoute({ ...config, counters, gate, faults });
  const batches = new BatchService({
    batchDelayMs: config.batchDelayMs,
    maxLines: config.maxBatchLines,
    answer: (body) => chat.answerLine(body),
    takeOutcome: () => faults.takeBatchOutcome(),
    loseCreateAnswer: () => faults.takeLostBatchCreate(),
  });
  const routes: Routes = { model: config.model, chat, batches };
  const server = createServer((req, res) => {
    counters.trackInFlight(res);
    dispatch(req, res, routes).catch((err: unknown) => replyError(res, err));
  });
  const setFaults = (plan: FaultPlan) => {
    faults.replace(plan);
    if (plan.holdAfter !== undefined) gate.holdAfter(plan.holdAfter);
  };

  // Options are checked before listening, so a bad one leaves nothing running.
  setFaults(opts.faults ?? {});
  const port = await listen(server, opts.port ?? 0);

  return {
    url: `http://127.0.0.1:${port}/v1`,
    stats: () => counters.stats(),
    counters: () => counters.snapshot(),
    countFor: (hash) => counters.countFor(hash),
    maxInWindow: (windowMs, what) => counters.maxInWindow(windowMs, what),
    injectedStatuses: () => counters.injectedStatuses(),
    acceptedFrom: (from) => counters.acceptedFrom(from),
    hold: () => gate.hold(),
    holdAfter: (answers) => gate.holdAfter(answers),
    release: () => gate.release(),
    setFaults,
    close: () =>
      new Promise<void>((resolve, reject) => {
        chat.close();
        batches.close();
        server.close((err) => (err ? reject(err) : resolve()));
        // Keep-alive sockets and hanging or held requests would otherwise hold close() open.
        server.closeAllConnections();
      }),
  };
}

/** Resolves with the port once `server` listens on 127.0.0.1: this is not a public service. */
function listen(server: Server, port: number): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

async function dispatch(req: IncomingMessage, res: ServerResponse, routes: Routes): Promise<void> {
  const [rawPath, rawQuery = ''] = (req.url ?? '/').split('?');
  const path = rawPath.replace(/\/+$/, '');
  if (path === '/v1/chat/completions') {
    if (req.method !== 'POST') throw new HttpError(405, `${req.method} is not allowed here; expected POST`);
    return routes.chat.serve(req, res);
  }
  if (path === '/v1/models') {
    if (req.method !== 'GET') throw new HttpError(405, `${req.method} is not allowed here; expected GET`);
    return sendJson(res, 200, {
      object: 'list',
      data: [{ id: routes.model, object: 'model', created: 0, owned_by: 'stepwise' }],
    });
  }
  if (await routes.batches.route(req, res, path, new URLSearchParams(rawQuery))) return;
  throw new HttpError(
    404,
    `no route ${req.method} ${path || '/'}; this server serves POST /v1/chat/completions, GET /v1/models, ` +
      '/v1/files and /v1/batches'
  );
}

/** A route's error as OpenAI answers errors; one that is not an {@link HttpError} is the teacher's own 500. */
function replyError(res: ServerResponse, err: unknown): void {
  if (res.headersSent || res.destroyed) return;
  const e =
    err instanceof HttpError
      ? err
      : new HttpError(500, `the teacher failed: ${(err as Error)?.message ?? err}`, 'server_error');
  sendJson(res, e.status, { error: e.toJSON() }, e.headers);
}
