/**
 * `stepwise`: run distillation pipelines, serve workers, start dev services, check recorded teacher outputs.
 * The entry point: runs the program (cli/program.ts wires the commands, each in commands/<command>.ts) and turns
 * input errors into one line.
 */
import { SpecError } from '../lib/pipeline/spec';
import { InputError, storeCredentialError } from '../lib/errors';
import { buildProgram } from './program';

async function run() {
  await buildProgram(process.argv).parseAsync(process.argv);
}

run().catch((err) => {
  // Input problems are the user's to fix: one line naming the field says more than a stack trace.
  if (err instanceof SpecError) console.error(`invalid spec: ${err.message}`);
  else if (err instanceof InputError) console.error(`stepwise: ${err.message}`);
  else if (storeCredentialError(err)) console.error(`stepwise: ${storeCredentialError(err)!.message}`);
  else console.error(err);
  process.exit(1);
});
