/**
 * A small OpenAI-compatible server of our own (node:http, no framework): the teacher's test double. It serves
 * (a) the zero-config demo's scripted teacher, which reasons correctly about demo reviews most of the time, and
 * (b) tests, which inject faults (error statuses, dropped connections, hangs, truncated or malformed bodies, empty
 * answers), impose a provider's rate limits, hold requests while a worker is killed, run OpenAI batches, and read back
 * what reached the server: requests and delivered answers per prompt hash, and the most requests (or tokens) that
 * arrived in any window. The teacher client talks to it through the official `openai` SDK exactly as it would to a
 * real endpoint, so retries, timeouts and error mapping are exercised for real.
 *
 * Routes: `POST /v1/chat/completions` (`chat-route.ts`), `GET /v1/models` (`server.ts`), and the Batch API's
 * `/v1/files` and `/v1/batches` (`batch/`). Faults are decided in `faults.ts`, holding in `hold-gate.ts`, counting
 * in `counters.ts`, the provider's rate limit in `provider-limit.ts` over the windows of `rate-window.ts`.
 */
export { startLocalTeacherServer } from './server';
export { DEFAULT_LOCAL_MODEL } from './options';
export { scriptedDemoTeacher, UNKNOWN_ANSWER } from './scripted';
export { ArrivalLog, SlidingWindowLimiter, type WindowVerdict } from './rate-window';
export type {
  FaultPlan,
  LocalTeacherServer,
  LocalTeacherServerCounters,
  LocalTeacherServerOptions,
  LocalTeacherServerStats,
  RateLimit,
  RequestSampling,
} from './types';
