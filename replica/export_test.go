package replica

// AckBatch exposes ackBatch to the scenario tests.
const AckBatch = ackBatch
