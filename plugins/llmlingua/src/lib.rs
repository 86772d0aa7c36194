//! LLMLingua-2 prompt compression: an XLM-RoBERTa token classifier predicts, per word, whether to
//! keep it; the prompt is cut to the requested rate before the model under test reads it.
