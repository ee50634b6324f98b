import { existsSync } from 'node:fs';
import { mkdir, rename, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { CreateBucketCommand, HeadBucketCommand, S3Client } from '@aws-sdk/client-s3';

import { cacheDir, ensureOnce, freePort, runCommand, waitFor, which, type Log } from './cache';
import { startServiceProcess, type ServiceProcess } from './service-process';
import { settings } from './config';

/**
 * Versity S3 Gateway (Apache-2.0): one Go binary serving the S3 API over a local folder. Chosen over MinIO, whose
 * server is AGPL-3.0. Conditional writes (`If-None-Match: *`) behave as on AWS S3, which the store relies on.
 */
export const VERSITYGW_VERSION = 'v1.8.0';

/** Where an S3-compatible endpoint is and how to sign requests to it. */
export interface S3Endpoint {
  /** e.g. `http://127.0.0.1:7070`; use with `forcePathStyle: true`. */
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
}

/**
 * Path of a versitygw binary: `$VERSITYGW_PATH`, else the pinned build in the cache, else built once with
 * `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0` (about 70 s on 2 cores; needs Go).
 */
export async function ensureVersitygw(log?: Log): Promise<string> {
  const configured = settings().versitygwPath;
  if (configured) return configured;
  const target = join(cacheDir(), 'versitygw', VERSITYGW_VERSION, 'versitygw');
  return ensureOnce(
    target,
    async (scratch) => {
      const go = which('go') ?? (existsSync('/usr/local/go/bin/go') ? '/usr/local/go/bin/go' : undefined);
      if (!go) {
        throw new Error(
          `building versitygw ${VERSITYGW_VERSION} needs Go (https://go.dev/dl/) on PATH; ` +
            `or set VERSITYGW_PATH to a versitygw binary`
        );
      }
      const bin = `${scratch}.bin`;
      await mkdir(bin, { recursive: true });
      try {
        log?.(`building versitygw ${VERSITYGW_VERSION} with go install (about a minute, once)`);
        await runCommand(go, ['install', `github.com/versity/versitygw/cmd/versitygw@${VERSITYGW_VERSION}`], {
          env: { ...process.env, GOBIN: bin, GOFLAGS: '-mod=mod' },
          log,
        });
        await rename(join(bin, 'versitygw'), scratch);
      } finally {
        await rm(bin, { recursive: true, force: true });
      }
    },
    log
  );
}

export interface S3ServerOptions {
  /** Folder served as the S3 root: each sub-folder is a bucket. */
  dataDir: string;
  /** Port on 127.0.0.1; a free one when omitted. */
  port?: number;
  /** Root credentials of the single account; fixed dev values by default (the server listens on loopback only). */
  accessKey?: string;
  secretKey?: string;
  log?: Log;
}

export interface S3Server extends S3Endpoint {
  region: 'us-east-1';
  /** Process id of the gateway, for tests that check nothing is left behind (the current one, after a restart). */
  readonly pid: number;
  stop(): Promise<void>;
  /** SIGKILL the gateway at once, as a crash would (no graceful shutdown of requests in flight); resolves once reaped. */
  kill(): Promise<void>;
  /**
   * Start the gateway again (after `stop` or `kill`) on the same port and data folder, so clients holding the
   * endpoint reconnect to the same objects; resolves once it answers HTTP. For outage tests.
   */
  restart(): Promise<void>;
}

/** Start versitygw in single-account `posix` mode over `dataDir`, resolving once it answers HTTP. */
export async function startS3Server(opts: S3ServerOptions): Promise<S3Server> {
  const binary = await ensureVersitygw(opts.log);
  const dataDir = resolve(opts.dataDir);
  await mkdir(dataDir, { recursive: true });
  const port = opts.port ?? (await freePort());
  const accessKey = opts.accessKey ?? 'stepwise';
  const secretKey = opts.secretKey ?? 'stepwise-dev-secret';
  const endpoint = `http://127.0.0.1:${port}`;
  const launch = () => launchVersitygw(binary, dataDir, port, { ...opts, accessKey, secretKey });
  let service = await launch();
  opts.log?.(`S3 gateway at ${endpoint} serving ${dataDir}`);
  return {
    endpoint,
    accessKey,
    secretKey,
    region: 'us-east-1',
    get pid() {
      return service.pid;
    },
    stop: () => service.stop(),
    async kill() {
      // SIGKILL first: a SIGTERM would let the gateway shut down gracefully, which a crash does not.
      try {
        if (service.pid > 0) process.kill(-service.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await service.stop();
    },
    async restart() {
      await service.stop();
      service = await launch();
    },
  };
}

async function launchVersitygw(
  binary: string,
  dataDir: string,
  port: number,
  opts: { accessKey: string; secretKey: string; log?: Log }
): Promise<ServiceProcess> {
  const healthPath = '/stepwise-health';
  const args = ['--port', `127.0.0.1:${port}`, '--quiet', '--health', healthPath, 'posix', dataDir];
  const service = startServiceProcess('versitygw', binary, args, {
    env: { ...process.env, ROOT_ACCESS_KEY: opts.accessKey, ROOT_SECRET_KEY: opts.secretKey },
    log: opts.log,
  });
  const endpoint = `http://127.0.0.1:${port}`;
  try {
    await waitFor(async () => (await fetch(`${endpoint}${healthPath}`)).ok, {
      timeoutMs: 30_000,
      intervalMs: 100,
      what: `versitygw at ${endpoint}`,
      abort: () => {
        const reason = service.exitReason();
        return reason && `versitygw ${reason}:\n${service.outputTail().trim().slice(-4000)}`;
      },
    });
  } catch (err) {
    await service.stop(2_000);
    throw err;
  }
  return service;
}

/** Create `bucket` unless it already exists (and is ours). */
export async function ensureBucket(target: S3Endpoint, bucket: string): Promise<void> {
  const client = new S3Client({
    endpoint: target.endpoint,
    region: target.region,
    forcePathStyle: true,
    credentials: { accessKeyId: target.accessKey, secretAccessKey: target.secretKey },
  });
  try {
    try {
      await client.send(new HeadBucketCommand({ Bucket: bucket }));
      return;
    } catch (err) {
      const status = (err as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status !== 404) throw err;
    }
    try {
      await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } catch (err) {
      // Lost a race with another creator: the bucket exists, which is all we wanted.
      if ((err as Error).name !== 'BucketAlreadyOwnedByYou') throw err;
    }
  } finally {
    client.destroy();
  }
}
