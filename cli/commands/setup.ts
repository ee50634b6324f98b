/**
 * `stepwise setup`: install the pinned binaries ahead of time, so a first run or a CI job does not pay for it.
 */
import { Command } from 'commander';
import { setup } from '../../infra/setup';
import { ensureCudaLibraries } from '../../infra/cuda';
import { log } from '../shared/options';

export function addSetupCommand(program: Command): void {
  program
    .command('setup')
    .description(
      'install what Stepwise runs on (pinned, cached): Temporal CLI, the native tfjs build, and versitygw for tests'
    )
    .option(
      '--for-tests',
      'also what tests need: the S3 test server (versitygw), Graphviz (dot), Chromium, the OpenLineage schemas, kustomize, MLflow'
    )
    .option('--no-native', 'skip the native tfjs build (wasm or cpu backends are used)')
    .option('--cuda', "also NVIDIA's CUDA 12 / cuDNN 9 runtime wheels for the native build's GPU use (about 3 GB)")
    .action(async (flags: { forTests?: boolean; native: boolean; cuda?: boolean }) => {
      const r = await setup({
        temporal: true,
        s3: Boolean(flags.forTests),
        graphviz: Boolean(flags.forTests),
        chromium: Boolean(flags.forTests),
        openLineageSchemas: Boolean(flags.forTests),
        kustomize: Boolean(flags.forTests),
        mlflow: Boolean(flags.forTests),
        tfjsNative: flags.native,
        log,
      });
      if (flags.cuda) {
        const libs = await ensureCudaLibraries(log);
        log(
          `stepwise setup: CUDA libraries in ${libs.root}; \`stepwise worker --queue gpu\` puts them on LD_LIBRARY_PATH`
        );
      }
      if (r.tfjsNative && !r.tfjsNative.ok)
        log(`stepwise setup: native tfjs unavailable (${r.tfjsNative.reason}); training falls back to wasm`);
    });
}
