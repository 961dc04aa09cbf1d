//! `tollgate report`: requests, tokens, spend, cost per 1K tokens and TTFT percentiles per team,
//! model or day, read from the ledger.
