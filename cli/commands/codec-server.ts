/**
 * `stepwise codec-server`: the payload codec of this deployment, served to the Temporal UI (or `temporal --codec-endpoint`)
 * so people can read the encrypted inputs and results of runs in their browser.
 */
import { Command } from 'commander';
import { InputError } from '../../lib/errors';
import { AesGcmPayloadCodec, payloadKeysFromSettings } from '../../workers/codec';
import { startCodecServer } from '../../workers/codec-server';
import { log, portFlag } from '../shared/options';

export function addCodecServerCommand(program: Command): void {
  program
    .command('codec-server')
    .description(
      'serve the payload codec (STEPWISE_PAYLOAD_KEYS) to the Temporal UI: POST /encode and /decode, CORS for --origin'
    )
    .requiredOption(
      '--origin <url>',
      "the Temporal UI's origin, the one page allowed to call it (e.g. http://localhost:8233)"
    )
    .option('--port <n>', 'port to listen on (0: any free port)', portFlag('--port', 0), 8888)
    .option('--host <address>', 'address to listen on; whoever reaches it can decrypt payloads', '127.0.0.1')
    .action(async (flags: { origin: string; port: number; host: string }) => serveCodec(flags));
}

async function serveCodec(flags: { origin: string; port: number; host: string }): Promise<void> {
  const keys = payloadKeysFromSettings();
  if (!keys) {
    throw new InputError(
      'stepwise codec-server needs the payload keys: set STEPWISE_PAYLOAD_KEYS or STEPWISE_PAYLOAD_KEYS_FILE',
      'STEPWISE_PAYLOAD_KEYS'
    );
  }
  const codec = new AesGcmPayloadCodec(keys);
  const server = await startCodecServer({ codec, origin: flags.origin, host: flags.host, port: flags.port, log });
  // stdout carries the address alone, for a script (or a test) to read; the rest is diagnostics.
  console.log(server.url);
  log(
    `stepwise codec-server: ${server.url} for ${flags.origin}; encrypting with key id ${codec.primaryKeyId}, ` +
      `decrypting ${codec.keyIds.join(', ')}. Set it as the UI's codec endpoint (TEMPORAL_CODEC_ENDPOINT).`
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await server.close();
}
