#!/usr/bin/env Rscript
# Write an .h5ad from R with rhdf5 only, the way R-side writers lay it out
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

suppressPackageStartupMessages(library(rhdf5))

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

if (file.exists(out)) invisible(file.remove(out))
h5createFile(out)
fid <- H5Fopen(out)

enc <- function(path, type, version = "0.2.0", group = FALSE) {
    obj <- if (group) H5Gopen(fid, path) else H5Dopen(fid, path)
    h5writeAttribute(type, obj, "encoding-type", asScalar = TRUE, variableLengthString = TRUE)
    h5writeAttribute(version, obj, "encoding-version", asScalar = TRUE, variableLengthString = TRUE)
    obj
}
close_obj <- function(obj) if (H5Iget_type(obj) == "H5I_GROUP") H5Gclose(obj) else H5Dclose(obj)
write_strings <- function(x, path) {
    h5write(x, fid, path, variableLengthString = vlen)
    close_obj(enc(path, "string-array"))
}
write_numeric <- function(x, path) {
    h5write(x, fid, path)
    close_obj(enc(path, "array"))
}
write_categorical <- function(x, path, levels) {
    h5createGroup(fid, path)
    codes <- match(x, levels) - 1L
    codes[is.na(codes)] <- -1L
    write_numeric(as.integer(codes), paste0(path, "/codes"))
    write_strings(levels, paste0(path, "/categories"))
    g <- enc(path, "categorical", group = TRUE)
    # a numpy-bool "ordered" attribute is an HDF5 enum that R cannot write easily;
    # R writers store an integer 0/1 instead, which h5py reads back as False/True
    h5writeAttribute(0L, g, "ordered", asScalar = TRUE)
    close_obj(g)
}
write_dataframe <- function(path, index_name, index, columns) {
    h5createGroup(fid, path)
    write_strings(index, paste0(path, "/", index_name))
    for (cn in names(columns)) {
        col <- columns[[cn]]
        p <- paste0(path, "/", cn)
        if (is.factor(col)) write_categorical(as.character(col), p, levels(col))
        else if (is.character(col)) write_strings(col, p)
        else write_numeric(col, p)
    }
    g <- enc(path, "dataframe", group = TRUE)
    h5writeAttribute(index_name, g, "_index", asScalar = TRUE, variableLengthString = TRUE)
    h5writeAttribute(names(columns), g, "column-order", variableLengthString = TRUE)
    close_obj(g)
}

# root group encoding
root <- H5Gopen(fid, "/")
h5writeAttribute("anndata", root, "encoding-type", asScalar = TRUE, variableLengthString = TRUE)
h5writeAttribute("0.1.0", root, "encoding-version", asScalar = TRUE, variableLengthString = TRUE)
H5Gclose(root)

# X: the genes x cells R matrix lands as (n_cells, n_genes) on disk (HDF5 is row-major)
write_numeric(expr, "X")
write_dataframe("obs", "cell_id", cell_id, list(
    cell_type = factor(cell_type, levels = types),
    batch = ifelse(seq_len(n_cells) %% 2 == 0, "b1", "b2"),
    depth = colSums(expr)))
write_dataframe("var", "gene_id", gene_id, list(symbol = symbol))
for (g in c("layers", "obsm", "varm", "obsp", "varp", "uns")) {
    h5createGroup(fid, g)
    close_obj(enc(g, "dict", "0.1.0", group = TRUE))
}
H5Fclose(fid)
h5closeAll()
cat(sprintf("wrote %s: %d cells x %d genes (%s strings)\n", out, n_cells, n_genes,
            if (vlen) "variable-length" else "fixed-length"))
