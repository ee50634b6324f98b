/**
 * What the registration fault tests share with the child process they SIGKILL: the register stage's input for a run
 * (the same bytes in both processes, so a retry in the test continues what the child began), and a store whose writes
 * can be failed, held or turned into a crash one at a time.
 */
import type { RegisterModelInput } from '../../lib/registry/run';
import { parseSpec } from '../../lib/pipeline/spec';
import { ArtifactStore, sha256Hex, type ArtifactRef, type BlobBackend } from '../../lib/store/artifact-store';

const ref = (what: string): ArtifactRef => ({ sha256: sha256Hex(what), size: what.length });

/** The register stage's input for run `runId` of model `name`: deterministic, as an activity retry's input is. */
export function registerInput(name: string, runId: string): RegisterModelInput {
  return {
    spec: parseSpec({ name, data: { kind: 'demo' }, teacher: { kind: 'scripted' } }),
    task: 'demo',
    workflowId: `wf-${runId}`,
    runId,
    sample: {
      datasetHash: sha256Hex('dataset'),
      sampleHash: sha256Hex(`sample ${runId}`),
      source: 'demo(seed=7,size=1500)',
      train: ref(`train ${runId}`),
      valid: ref(`valid ${runId}`),
      test: ref(`test ${runId}`),
      counts: { train: 1080, valid: 120, test: 300 },
    },
    training: {
      checkpoint: ref(`checkpoint ${runId}`),
      trainLog: ref(`log ${runId}`),
      backend: 'cpu',
      steps: 60,
      finalLoss: 0.25,
      params: 1234,
      wallMs: 1000,
    },
    evaluation: {
      predictions: ref(`predictions ${runId}`),
      metrics: ref(`metrics ${runId}`),
      accuracy: 0.75,
      correct: 225,
      total: 300,
      majorityBaseline: { label: 'positive', accuracy: 0.5 },
    },
  };
}

/**
 * Called around each write of a {@link HookedBackend}, with its 0-based index among the store's writes. `before`
 * may throw (the write never happens) or wait (another writer overtakes); `after` runs once the write took effect,
 * and may throw too (the write happened but its caller never hears so, as when a worker dies or a response is lost).
 */
export interface WriteHooks {
  before?(index: number, key: string): Promise<void> | void;
  after?(index: number, key: string): Promise<void> | void;
}

/** A real backend whose writes pass through {@link WriteHooks}; reads go straight through. */
export class HookedBackend implements BlobBackend {
  /** Keys written (or attempted), in order. */
  readonly writes: string[] = [];
  constructor(
    private readonly inner: BlobBackend,
    private readonly hooks: WriteHooks
  ) {}

  get location(): string {
    return this.inner.location;
  }

  async put(...[key, body, opts]: Parameters<BlobBackend['put']>): Promise<boolean> {
    const index = this.writes.push(key) - 1;
    await this.hooks.before?.(index, key);
    const created = await this.inner.put(key, body, opts);
    await this.hooks.after?.(index, key);
    return created;
  }

  get(key: string): Promise<Buffer> {
    return this.inner.get(key);
  }

  getTagged(key: string): Promise<{ body: Buffer; etag: string } | undefined> {
    return this.inner.getTagged(key);
  }

  exists(key: string): Promise<boolean> {
    return this.inner.exists(key);
  }

  list(prefix: string): Promise<string[]> {
    return this.inner.list(prefix);
  }
}

/** The same store as `store`, with its writes hooked; closing it leaves `store` open. */
export function hooked(store: ArtifactStore, hooks: WriteHooks): ArtifactStore & { backend: HookedBackend } {
  return new ArtifactStore(new HookedBackend(store.backend, hooks)) as ArtifactStore & { backend: HookedBackend };
}
