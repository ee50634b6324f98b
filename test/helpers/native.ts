/**
 * Whether this machine must have the native build: `STEPWISE_EXPECT_NATIVE=1` (.ci/run sets it), or any CI run
 * (`CI=true`, as CI services set it) that did not opt out of the build with `STEPWISE_SKIP_NATIVE=1`, since
 * `npm test`'s setup builds it; `STEPWISE_EXPECT_NATIVE=0` says it may be missing. Where it is expected, a missing
 * native backend fails the tests that need it: passing on wasm alone would leave the code training runs natively
 * untested.
 */
export function nativeExpected(): boolean {
  const expect = process.env.STEPWISE_EXPECT_NATIVE;
  if (expect === '1' || expect === '0') return expect === '1';
  return process.env.CI === 'true' && process.env.STEPWISE_SKIP_NATIVE !== '1';
}

/** Whether Stepwise's own kernels must be loaded too: setup builds them with the native build, unless switched off. */
export function stepwiseKernelsExpected(): boolean {
  return nativeExpected() && process.env.STEPWISE_NATIVE_OPS !== '0';
}
