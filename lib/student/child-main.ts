/**
 * Entry point of the student child process (see child.ts): receives one job over IPC, runs it, sends progress and
 * then a result or an error, and exits.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { initBackend } from './backend';
import type { ChildMessage, PredictJobResult, StudentJob, TrainJobResult } from './child';
import { Student } from './evaluate';
import { trainToFile } from './train';

function send(message: ChildMessage): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!process.send) {
      reject(new Error('child-main.ts must be started by runStudentJob (no IPC channel)'));
      return;
    }
    process.send(message, undefined, {}, (err) => (err ? reject(err) : resolve()));
  });
}

function sendProgress(progress: Extract<ChildMessage, { type: 'progress' }>['progress']): void {
  // Fire and forget: a lost progress message costs a stale progress bar, and waiting would slow every step.
  process.send?.({ type: 'progress', progress } satisfies ChildMessage);
}

async function runJob(job: StudentJob): Promise<TrainJobResult | PredictJobResult> {
  if (job.kind === 'train') {
    const backend = (await initBackend(job.backend ?? job.options.backend)).backend;
    const initFrom = job.initFromPath ? await readFile(job.initFromPath) : undefined;
    const { checkpointDir } = job;
    // Checkpoints are streamed to their files tensor by tensor (atomically: a reader never sees half of one), so this
    // process never holds a second copy of the weights and optimiser state.
    return trainToFile(
      job.records,
      {
        ...job.options,
        backend,
        ...(job.valid ? { valid: job.valid } : {}),
        // Read tensor by tensor, never whole beside the tensors decoded from it.
        ...(job.resumeFromPath ? { resumeFromFile: job.resumeFromPath } : {}),
        ...(initFrom ? { initFrom } : {}),
      },
      job.checkpointPath,
      {
        onProgress: sendProgress,
        ...(checkpointDir
          ? {
              checkpointFiles: {
                path: (step) => join(checkpointDir, `resume-${step}.safetensors`),
                // Awaited: the parent hears of a checkpoint only once the file is whole, and before later progress.
                written: ({ step, path }) => send({ type: 'checkpoint', step, path }),
              },
            }
          : {}),
      }
    );
  }
  if (job.kind === 'predict') {
    const student = await Student.load(await readFile(job.checkpointPath), job.backend ?? 'auto');
    const { backend } = student;
    try {
      const outputs = await student.predict(job.inputs, {
        maxLength: job.maxLength,
        batchSize: job.batchSize,
        onProgress: (done, total) => sendProgress({ step: done, totalSteps: total }),
      });
      const count = Math.min(job.explain?.count ?? 0, job.inputs.length);
      if (count === 0) return { outputs, backend };
      const started = Date.now();
      const explanations = await student.explain(job.inputs.slice(0, count), { batchSize: job.batchSize });
      return explanations ? { outputs, backend, explanations, explainMs: Date.now() - started } : { outputs, backend };
    } finally {
      student.dispose();
    }
  }
  throw Object.assign(
    new Error(`job kind is ${JSON.stringify((job as { kind?: unknown }).kind)}; expected 'train' or 'predict'`),
    {
      name: 'InputError',
      field: 'kind',
    }
  );
}

process.once('message', (message: { type: 'job'; job: StudentJob }) => {
  runJob(message.job)
    .then((result) => send({ type: 'result', result }))
    .catch((err: unknown) => {
      const e = err instanceof Error ? err : new Error(String(err));
      const { field, source } = e as { field?: string; source?: string };
      return send({ type: 'error', error: { name: e.name, message: e.message, stack: e.stack, field, source } });
    })
    .catch(() => process.exit(70))
    .finally(() => {
      // The parent disconnects once it has the answer; exit then (or now, if it is gone already).
      if (!process.connected) process.exit(0);
    });
});

// An orphaned child (parent killed) must not train on for hours: the IPC channel closing is the sign.
process.on('disconnect', () => process.exit(0));
