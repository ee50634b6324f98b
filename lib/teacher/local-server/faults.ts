/**
 * Fault injection: which fault, if any, the next request or batch takes from the plan a test set, and the broken
 * replies that some faults send. The plan's precedence (see {@link FaultPlan}) is decided here, in one place, so the
 * chat route reads as the happy path with a few questions to this unit along the way.
 */
import type { ServerResponse } from 'node:http';

import type { BatchOutcome } from './batch/model';
import { HttpError } from './http';
import type { FaultPlan } from './types';

/** A fault that replaces a request's answer after any hang and latency, in this order of precedence. */
export type BodyFault = 'truncated' | 'malformed' | 'empty';

export class FaultInjector {
  private plan: FaultPlan = {};

  /** Replaces the remaining plan; holding (`plan.holdAfter`) is the server's to arm. */
  replace(plan: FaultPlan): void {
    this.plan = copyFaults(plan);
  }

  /** The injected error status the next request is answered with, if any is left. */
  takeStatus(): HttpError | undefined {
    const status = this.plan.status;
    if (!(status && status.count > 0)) return undefined;
    const { code, retryAfterS, retryAfterMs } = status;
    if (--status.count === 0) delete this.plan.status;
    const headers: Record<string, string> = {};
    if (retryAfterMs !== undefined) headers['retry-after-ms'] = String(retryAfterMs);
    if (retryAfterS !== undefined) headers['retry-after'] = String(retryAfterS);
    else if (retryAfterMs !== undefined) headers['retry-after'] = String(Math.ceil(retryAfterMs / 1000));
    return new HttpError(
      code,
      `injected fault: status ${code}`,
      code >= 500 ? 'server_error' : 'invalid_request_error',
      null,
      null,
      headers
    );
  }

  /** Whether the next request's connection is dropped unanswered. */
  takeDrop(): boolean {
    if (!(this.plan.dropConnection && this.plan.dropConnection > 0)) return false;
    this.plan.dropConnection--;
    return true;
  }

  /** How long the next request stalls, if a hang is pending (one request takes it). */
  takeHang(): number | undefined {
    const hang = this.plan.hangMs;
    if (hang !== undefined) delete this.plan.hangMs;
    return hang;
  }

  takeBodyFault(): BodyFault | undefined {
    const plan = this.plan;
    if (plan.truncatedBody && plan.truncatedBody > 0) {
      plan.truncatedBody--;
      return 'truncated';
    }
    if (plan.malformedBody && plan.malformedBody > 0) {
      plan.malformedBody--;
      return 'malformed';
    }
    if (plan.emptyCompletion && plan.emptyCompletion > 0) {
      plan.emptyCompletion--;
      return 'empty';
    }
    return undefined;
  }

  /** Whether the batch just created loses its answer (the connection is dropped instead). */
  takeLostBatchCreate(): boolean {
    if (!(this.plan.loseBatchCreates && this.plan.loseBatchCreates > 0)) return false;
    this.plan.loseBatchCreates--;
    return true;
  }

  /** How a batch leaving `validating` ends, when a fault forces it. */
  takeBatchOutcome(): BatchOutcome | undefined {
    const plan = this.plan;
    if (plan.failBatches && plan.failBatches > 0) {
      plan.failBatches--;
      return { status: 'failed' };
    }
    const expire = plan.expireBatches;
    if (expire && expire.count > 0) {
      if (--expire.count === 0) delete plan.expireBatches;
      return { status: 'expired', doneLines: expire.doneLines ?? 0 };
    }
    return undefined;
  }
}

/**
 * Answers 200 with a content-length for the whole `completion`, sends half of it, then destroys the socket: the
 * client sees the body end early.
 */
export function sendTruncated(res: ServerResponse, completion: object): void {
  const text = Buffer.from(JSON.stringify(completion));
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': text.length });
  res.write(text.subarray(0, text.length >> 1), () => res.destroy());
}

/** Well framed (the content-length matches), but cut mid-object: what a broken proxy or server sends. */
export function sendMalformed(res: ServerResponse, completion: object): void {
  const text = JSON.stringify(completion);
  const body = text.slice(0, text.length >> 1);
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/** A copy the server may consume without changing the caller's plan. */
function copyFaults(f: FaultPlan): FaultPlan {
  return {
    ...f,
    status: f.status ? { ...f.status } : undefined,
    expireBatches: f.expireBatches ? { ...f.expireBatches } : undefined,
  };
}
