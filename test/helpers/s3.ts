/**
 * A versitygw S3 server for one test file, with a bucket, for tests that need the store but not Temporal: started in
 * `test.before`, stopped (its data removed) after. The AWS variables point the SDK's default chain at it, as a
 * deployment's would.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ensureBucket, startS3Server, type S3Server } from '../../infra/s3-server';

export function s3ServerForFile(bucket: string): () => S3Server {
  let s3: S3Server | undefined;
  let data: string | undefined;
  test.before(async () => {
    data = await mkdtemp(join(tmpdir(), 'stepwise-s3-'));
    s3 = await startS3Server({ dataDir: data });
    await ensureBucket(s3, bucket);
    process.env.AWS_ACCESS_KEY_ID = s3.accessKey;
    process.env.AWS_SECRET_ACCESS_KEY = s3.secretKey;
  });
  test.after.always(async () => {
    await s3?.stop();
    if (data) await rm(data, { recursive: true, force: true });
  });
  return () => {
    if (!s3) throw new Error('the S3 server starts in test.before: use it inside a test');
    return s3;
  };
}
