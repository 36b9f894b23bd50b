"""Plain services and helpers of the Custom LLM Server: no Tornado handlers live here."""
