/**
 * The upload queue for resume checkpoints: files the training child writes (child.ts) go to the artifact store beside
 * training, one at a time. Only the newest checkpoint matters for a resume, so one that arrives while another uploads
 * replaces any still waiting; each file is deleted once stored or passed over.
 */
import { rm } from 'node:fs/promises';
import type { ArtifactRef, ArtifactStore } from '../store/artifact-store';
import type { CheckpointFile } from './child';

export interface CheckpointUploadHooks {
  /** A checkpoint is in the store: where a retry can resume from (the caller heartbeats it). */
  onStored(ref: ArtifactRef, step: number): void;
  /** A checkpoint could not be stored. Training goes on: a lost checkpoint only costs recomputation after a crash. */
  onFailed(step: number, err: Error): void;
}

export class CheckpointUploads {
  private waiting?: CheckpointFile;
  private uploading?: Promise<void>;
  /** Checkpoints stored so far. */
  stored = 0;

  constructor(
    private readonly store: Pick<ArtifactStore, 'putFile'>,
    private readonly hooks: CheckpointUploadHooks
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
      try {
        const ref = await this.store.putFile(file.path, 'application/octet-stream');
        this.stored += 1;
        this.hooks.onStored(ref, file.step);
      } catch (err) {
        this.hooks.onFailed(file.step, err as Error);
      }
      await rm(file.path, { force: true });
    }
    this.uploading = undefined;
  }
}
