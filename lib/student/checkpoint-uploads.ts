/**
 * The upload queue for resume checkpoints: files the training child writes (child.ts) go to the artifact store beside
 * training, one at a time. Only the newest checkpoint matters for a resume, so one that arrives while another uploads
 * replaces any still waiting; each file is deleted once stored or passed over.
 *
 * The store is content-addressed and skips a write whose object exists. A checkpoint a resume found damaged at rest
 * would therefore stay damaged when training writes the same bytes again (it does, retracing its steps from an older
 * checkpoint or the start): those are named in `damaged`, and written over.
 */
import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { objectKey, type ArtifactRef, type ArtifactStore } from '../store/artifact-store';
import type { CheckpointFile } from './child';

export interface CheckpointUploadHooks {
  /**
   * A checkpoint is in the store: where a retry can resume from (the caller heartbeats it), and how long its upload
   * took in milliseconds.
   */
  onStored(ref: ArtifactRef, step: number, uploadMs: number): void;
  /** A checkpoint could not be stored. Training goes on: a lost checkpoint only costs recomputation after a crash. */
  onFailed(step: number, err: Error): void;
}

export class CheckpointUploads {
  private waiting?: CheckpointFile;
  private uploading?: Promise<void>;
  /** Checkpoints stored so far. */
  stored = 0;

  constructor(
    private readonly store: Pick<ArtifactStore, 'putFile' | 'backend'>,
    private readonly hooks: CheckpointUploadHooks,
    /** sha256s of stored checkpoints known to be damaged: rewritten, not skipped, when training writes them again. */
    private readonly damaged: ReadonlySet<string> = new Set()
  ) {}

  /** Queue a checkpoint file (the child's `onCheckpoint`); returns at once, the upload runs beside training. */
  add(file: CheckpointFile): void {
    if (this.waiting) void rm(this.waiting.path, { force: true });
    this.waiting = file;
    this.uploading ??= this.drain();
  }

  /** Drop what is still waiting and wait for the upload in flight: training is over, its result supersedes them. */
  async close(): Promise<void> {
    if (this.waiting) await rm(this.waiting.path, { force: true });
    this.waiting = undefined;
    await this.uploading;
  }

  private async drain(): Promise<void> {
    while (this.waiting) {
      const file = this.waiting;
      this.waiting = undefined;
      const started = performance.now();
      try {
        const ref = await this.store.putFile(file.path, 'application/octet-stream');
        if (this.damaged.has(ref.sha256)) {
          // The bytes hash to the key, so writing them over the damaged object restores it.
          await this.store.backend.put(objectKey(ref.sha256), () => createReadStream(file.path), {
            contentType: 'application/octet-stream',
          });
        }
        this.stored += 1;
        this.hooks.onStored(ref, file.step, performance.now() - started);
      } catch (err) {
        this.hooks.onFailed(file.step, err as Error);
      }
      await rm(file.path, { force: true });
    }
    this.uploading = undefined;
  }
}
