"""`python export/_quantize.py F16 OUT FTYPE THREADS`: llama_cpp.llama_model_quantize in a child process,
so llama.cpp's console output (which names every tensor that falls back to another type) is captured
whole instead of spilling into the caller's terminal or the studio's process."""
import ctypes
import sys

import llama_cpp


def main(source: str, target: str, ftype: str, threads: str) -> int:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, ftype)
    params.nthread = int(threads)
    return llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
