// SPDX-License-Identifier: Apache-2.0
// Catch2 main of the MPI tests: MPI is initialised (funneled: only the main thread communicates)
// around the session; every rank runs every test case, and mpirun's exit status is non-zero if
// any rank fails.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <mpi.h>

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  Catch::Session session;
  if (const int rc = session.applyCommandLine(argc, argv); rc != 0) {
    MPI_Finalize();
    return rc;
  }
  // Only rank 0 prints the summary of passing runs; every rank prints its failures.
  if (rank != 0 && session.configData().reporterName.empty()) session.configData().showSuccessfulTests = false;
  const int failed = session.run();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any != 0 ? 1 : 0;
}
