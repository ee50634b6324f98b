/**
 * Holding, for kill tests: a test lets a number of answers through, holds every further accepted request while it
 * kills a worker, then releases and counts what was asked twice. On its own because its accounting (places taken by
 * requests still in progress versus answers delivered) is the subtle part of the server, and the chat route should
 * only have to ask it for a turn.
 */
import type { ServerResponse } from 'node:http';

import { InputError } from '../../errors';

/** Where holding stands: off, holding everything, or letting a number of answers through first. */
type HoldState =
  { kind: 'open' } | { kind: 'closed' } | { kind: 'after'; limit: number; answered: number; passing: number };
export type Gate = Extract<HoldState, { kind: 'after' }>;

/** A held request: how to let it go on (through the gate when `gate` is set). */
interface Held {
  resume(gate: Gate | undefined): void;
}

export class HoldGate {
  private state: HoldState = { kind: 'open' };
  /** Held requests in arrival order (a Set keeps insertion order and deletes in O(1)). */
  private readonly held = new Set<Held>();

  /** @param onHeldChange told how many requests are held each time that changes, for the server's counters. */
  constructor(private readonly onHeldChange: (held: number) => void) {}

  hold(): void {
    this.state = { kind: 'closed' };
  }

  /** @throws InputError when `answers` is not an integer >= 0. */
  holdAfter(answers: number): void {
    if (!Number.isSafeInteger(answers) || answers < 0) {
      throw new InputError(`holdAfter is ${JSON.stringify(answers)}; expected an integer >= 0`, 'holdAfter');
    }
    if (answers === 0) {
      this.state = { kind: 'closed' };
    } else {
      const gate: Gate = { kind: 'after', limit: answers, answered: 0, passing: 0 };
      this.state = gate;
      // Requests held by an earlier hold() get the new gate's places first.
      this.fill(gate);
    }
  }

  release(): void {
    this.state = { kind: 'open' };
    const all = [...this.held];
    this.held.clear();
    this.onHeldChange(0);
    for (const h of all) h.resume(undefined);
  }

  /**
   * Admits an accepted request past holding: at once, or once released (or let through a gate). Resolves with the
   * gate it passed, if any, for {@link settle}.
   */
  admit(res: ServerResponse): Promise<Gate | undefined> {
    const state = this.state;
    if (state.kind === 'open') return Promise.resolve(undefined);
    if (state.kind === 'after' && state.answered + state.passing < state.limit) {
      state.passing++;
      return Promise.resolve(state);
    }
    return new Promise((resolve) => {
      const entry: Held = {
        resume: (gate) => {
          res.off('close', gone);
          resolve(gate);
        },
      };
      // A client that gives up while held is dropped: it is not waiting for an answer any more.
      const gone = () => {
        this.held.delete(entry);
        this.onHeldChange(this.held.size);
        resolve(undefined);
      };
      res.once('close', gone);
      this.held.add(entry);
      this.onHeldChange(this.held.size);
    });
  }

  /**
   * Reports the outcome of an admitted request to the gate it passed (if any) when its response closes. Returns
   * what to call once its answer is delivered: only delivered answers use up a gate's places.
   */
  settle(gate: Gate | undefined, res: ServerResponse): () => void {
    let answered = false;
    if (gate) {
      if (res.closed) this.leave(gate, false);
      else res.once('close', () => this.leave(gate, answered));
    }
    return () => {
      answered = true;
    };
  }

  /** While a gate has room (answers delivered plus answers in progress below its limit), let held requests through. */
  private fill(gate: Gate): void {
    for (const h of this.held) {
      if (gate.answered + gate.passing >= gate.limit) return;
      this.held.delete(h);
      this.onHeldChange(this.held.size);
      gate.passing++;
      h.resume(gate);
    }
  }

  /** A request that passed a gate has ended: count its answer, close the gate when full, or free its place. */
  private leave(gate: Gate, answered: boolean): void {
    gate.passing--;
    if (answered) gate.answered++;
    if (this.state !== gate) return; // released or replaced meanwhile
    if (gate.answered >= gate.limit) this.state = { kind: 'closed' };
    else this.fill(gate);
  }
}
