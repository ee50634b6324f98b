/**
 * Waits for `p` to settle, or for `ms`, whichever comes first; true when `p` settled (a rejection counts: the caller
 * only bounds the wait and reads the outcome elsewhere). The timer is cleared either way, so a short wait in a loop,
 * or a bounded wait that `p` wins, leaves no timer behind to hold the process or pile up.
 */
export async function settledWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<false>((resolve) => {
    timer = setTimeout(resolve, ms, false);
  });
  try {
    return await Promise.race([p.then(settledFlag, settledFlag), bound]);
  } finally {
    clearTimeout(timer);
  }
}

const settledFlag = (): true => true;
