"""ChFT error-correction data (spec chft.md): select, transcribe and pair stages (`stages`); alignment,
types, segments, the homophone channel, CER (`core`); numbers as speech reads them (`numbers`);
scoring a corrector (`scoring`)."""
