// What a call refuses with: its code and message (undefined when it returns). For asserting
// exact refusals of code that throws QkError.
export function refusal(fn: () => unknown): { code: string; message: string } | undefined {
  try {
    fn()
  } catch (e) {
    return { code: (e as { code: string }).code, message: (e as Error).message }
  }
  return undefined
}
