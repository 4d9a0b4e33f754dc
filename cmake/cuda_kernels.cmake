# The CUDA kernels alone, with the CUDA toolkit only (no torch, no GPU needed to build):
#   pyhypersphere_cuda_kernels   static library of csrc/cuda/*.cu
#   uniform_bench_cuda           standalone benchmark + smoke test (needs a GPU to run)
#   mma_layout_test              host test of the fragment layouts against the PTX ISA's
#   rowblock_plan_test           host test of the work split, parts, merges; host emulation
#   tile_size_test               host test of the block-size rule (uniform_block_rows_for)
#
#   cmake -S . -B build/cmake-cuda -DPYHYPERSPHERE_CUDA_KERNELS_ONLY=ON
#   cmake --build build/cmake-cuda && build/cmake-cuda/mma_layout_test
#   build/cmake-cuda/uniform_bench_cuda            (on a machine with an sm_80+ GPU)
#
# CMAKE_CUDA_ARCHITECTURES defaults to "80;90" (A100, H100), as setup.py's
# TORCH_CUDA_ARCH_LIST; pass -DCMAKE_CUDA_ARCHITECTURES=90 to halve the build time.
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES 80 90)
endif()
enable_language(CUDA)
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

# The flags torch.utils.cpp_extension gives nvcc for the extension build, plus setup.py's.
set(PYHYPERSPHERE_NVCC_FLAGS
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
    --expt-relaxed-constexpr --use_fast_math -lineinfo)

file(GLOB PYHYPERSPHERE_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
add_library(pyhypersphere_cuda_kernels STATIC ${PYHYPERSPHERE_CUDA_SOURCES})
target_include_directories(pyhypersphere_cuda_kernels PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/csrc)
target_compile_options(pyhypersphere_cuda_kernels PRIVATE
                       $<$<COMPILE_LANGUAGE:CUDA>:${PYHYPERSPHERE_NVCC_FLAGS}>)

add_executable(uniform_bench_cuda csrc/bench/uniform_bench_cuda.cu)
target_link_libraries(uniform_bench_cuda PRIVATE pyhypersphere_cuda_kernels)
target_compile_options(uniform_bench_cuda PRIVATE
                       $<$<COMPILE_LANGUAGE:CUDA>:${PYHYPERSPHERE_NVCC_FLAGS}>)

add_executable(mma_layout_test csrc/cuda/tests/mma_layout_test.cpp)

add_executable(rowblock_plan_test csrc/cuda/tests/rowblock_plan_test.cpp)

add_executable(tile_size_test csrc/cuda/tests/tile_size_test.cu)
target_link_libraries(tile_size_test PRIVATE pyhypersphere_cuda_kernels)
target_compile_options(tile_size_test PRIVATE
                       $<$<COMPILE_LANGUAGE:CUDA>:${PYHYPERSPHERE_NVCC_FLAGS}>)

enable_testing()
add_test(NAME mma_layout_test COMMAND mma_layout_test)
add_test(NAME rowblock_plan_test COMMAND rowblock_plan_test)
add_test(NAME tile_size_test COMMAND tile_size_test)
