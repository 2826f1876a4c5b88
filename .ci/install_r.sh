#!/usr/bin/env bash
# Install R + the Bioconductor/CRAN packages used by the R package r/anndataRnn, its checks
# (testthat, roxygen2, the vignette's knitr/rmarkdown/pandoc) and tests/r/*.R (Debian bookworm).
# Idempotent: exits quickly when Rscript and all libraries are already present.
set -euo pipefail

R_LIBS_NEEDED="rhdf5 SingleCellExperiment SummarizedExperiment S4Vectors HDF5Array hdf5r Matrix jsonlite testthat roxygen2 knitr rmarkdown"
DEB_PKGS="r-base-core r-bioc-rhdf5 r-bioc-singlecellexperiment r-bioc-hdf5array r-cran-hdf5r r-cran-matrix r-cran-jsonlite r-cran-testthat r-cran-roxygen2 r-cran-knitr r-cran-rmarkdown pandoc"

have_all() {
    command -v Rscript >/dev/null 2>&1 || return 1
    command -v pandoc >/dev/null 2>&1 || return 1
    Rscript --vanilla -e "
        pk <- strsplit('${R_LIBS_NEEDED}', ' ')[[1]]
        miss <- pk[!nzchar(vapply(pk, function(p) system.file(package = p), character(1)))]
        if (length(miss)) { cat('missing R packages:', miss, '\n'); quit(status = 1) }
    " >/dev/null 2>&1
}

if have_all; then
    echo "install_r.sh: R and required packages already present ($(Rscript --version 2>&1 | head -n1))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $DEB_PKGS >/dev/null

if ! have_all; then
    echo "install_r.sh: R packages still missing after apt-get install" >&2
    exit 1
fi
echo "install_r.sh: installed $(Rscript --version 2>&1 | head -n1)"
