/**
 * A register stage that dies: runs `registerRun` for one run against a real store and SIGKILLs its own process right
 * after the store confirms write number `killAfter` (0-based), as a worker killed mid-stage dies, with no chance to
 * clean up. Spawned by test/faults/register-once.test.ts:
 *
 *   node --import tsx test/faults/register-once-child.ts '{"store":"s3://…","name":"m","runId":"r","killAfter":0}'
 *
 * The S3 endpoint and credentials come from the standard AWS variables, inherited from the test. Exits 3 if the
 * registration finished without reaching the write it was to die after.
 */
import { openStore } from '../../lib/store';
import { registerRun } from '../../lib/registry/run';
import { hooked, registerInput } from './register-fixture';

async function main(): Promise<void> {
  const {
    store: location,
    name,
    runId,
    killAfter,
  } = JSON.parse(process.argv[2] ?? '{}') as {
    store: string;
    name: string;
    runId: string;
    killAfter: number;
  };
  const plain = openStore(location);
  const store = hooked(plain, {
    after(index, key) {
      if (index !== killAfter) return;
      // Tell the test which write it died after, then die at once: no finally block or pending write runs.
      process.stdout.write(`${JSON.stringify({ killedAfter: index, key })}\n`, () =>
        process.kill(process.pid, 'SIGKILL')
      );
      return new Promise<void>(() => undefined);
    },
  });
  try {
    await registerRun(store, registerInput(name, runId), 'register-once-child');
    process.exitCode = 3;
  } finally {
    await plain.close();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 2;
});
