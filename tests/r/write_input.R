#!/usr/bin/env Rscript
# Write an .h5ad from R with the package anndataRnn (writeH5ad's code, rhdf5), the way
# R-side writers lay it out
# (dense double X from a genes x cells R matrix, string categoricals, and
# obs/var index datasets named by the "_index" attribute: "cell_id"/"gene_id").
#
# Usage:
#   Rscript tests/r/write_input.R OUT.h5ad [--cells 90] [--genes 24] [--seed 1]
#                                 [--fixed-length-strings]
#
# obs: cell_id (index), cell_type (categorical: "alpha", "beta", "gamma"),
#      batch (string), depth (double); var: gene_id (index), symbol (string).
# The expression of each cell follows its cell type, so a classifier can learn it.
# With --fixed-length-strings, string datasets are fixed-length (rhdf5's default)
# instead of variable-length.

suppressPackageStartupMessages(library(anndataRnn))

args <- commandArgs(trailingOnly = TRUE)
out <- NULL; n_cells <- 90L; n_genes <- 24L; seed <- 1L; vlen <- TRUE
i <- 1
while (i <= length(args)) {
    a <- args[[i]]
    if (a == "--cells") { n_cells <- as.integer(args[[i + 1]]); i <- i + 1 }
    else if (a == "--genes") { n_genes <- as.integer(args[[i + 1]]); i <- i + 1 }
    else if (a == "--seed") { seed <- as.integer(args[[i + 1]]); i <- i + 1 }
    else if (a == "--fixed-length-strings") vlen <- FALSE
    else if (is.null(out)) out <- a
    else stop("unexpected argument ", a)
    i <- i + 1
}
if (is.null(out)) stop("usage: Rscript write_input.R OUT.h5ad [--cells N] [--genes N] [--seed N]")

set.seed(seed)
types <- c("alpha", "beta", "gamma")
cell_type <- rep(types, length.out = n_cells)
cell_id <- sprintf("cell_%03d", seq_len(n_cells))
gene_id <- sprintf("ENSG%05d", seq_len(n_genes))
symbol <- sprintf("GENE%d", seq_len(n_genes))
# genes x cells, as an R user holds it (SingleCellExperiment orientation)
profile <- sapply(seq_along(types), function(k) sin(seq_len(n_genes) / 3 + 2 * k))
expr <- profile[, match(cell_type, types)] * 2 + matrix(rnorm(n_genes * n_cells, sd = 0.3), n_genes)
expr <- expr - min(expr)

# the package's writer (one R code path), with the index datasets named the way other R
# writers name them and, optionally, rhdf5's fixed-length strings
sce <- SingleCellExperiment(
    assays = list(X = expr),
    colData = DataFrame(cell_type = factor(cell_type, levels = types),
                        batch = ifelse(seq_len(n_cells) %% 2 == 0, "b1", "b2"),
                        depth = colSums(expr), row.names = cell_id),
    rowData = DataFrame(symbol = symbol, row.names = gene_id))
anndataRnn:::.write_h5ad(sce, out, index_names = c(obs = "cell_id", var = "gene_id"),
                         variable_length_strings = vlen)
cat(sprintf("wrote %s: %d cells x %d genes (%s strings)\n", out, n_cells, n_genes,
            if (vlen) "variable-length" else "fixed-length"))
