#!/usr/bin/env Rscript
# The R face end to end: a SingleCellExperiment -> rnnClassify() / rnnPredict() from R (the
# package anndataRnn running the anndata-rnn command line) -> the same object with the
# results.  tests/test_r_interop.py runs the same commands from Python on the .h5ad the
# package writes here and compares.
#
# Usage: Rscript tests/r/round_trip.R OUT_DIR
#
# Writes to OUT_DIR:
#   input.h5ad                 writeH5ad(sce): what rnnClassify gives the tool
#   input_*.csv                the object's values (counts, colData, rowData) for Python
#   r_classify_obs.csv         name, rnn_pred, rnn_conf, rnn_split after rnnClassify
#   r_classify_proba.csv       reducedDim(sce, "rnn_proba")
#   r_classify_embedding.csv   reducedDim(sce, "rnn")
#   r_predict_obs.csv          name, again_pred, again_conf after rnnPredict on a new object
#   r_error.txt                the R error of rnnClassify with a label that does not exist
#   model_r.h5                 the model rnnClassify trained
#   summary.json               what R checked, for the Python side
# Exits non-zero on any failed check, with a "FAILED:" line.

suppressPackageStartupMessages(library(anndataRnn))

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript round_trip.R OUT_DIR")
out <- args[[1]]
dir.create(out, showWarnings = FALSE, recursive = TRUE)
fail <- function(...) {
    cat("FAILED:", ..., "\n")
    quit(status = 1)
}
check <- function(ok, ...) if (!isTRUE(ok)) fail(...)

# ---- the object: sparse counts (dgCMatrix), a factor label with NA, integers with NA ----
set.seed(7)
n_cells <- 90L
n_genes <- 24L
types <- c("alpha", "beta", "gamma")
cell_type <- factor(rep(types, length.out = n_cells), levels = types)
rate <- matrix(1, n_genes, n_cells)
for (k in seq_along(types)) {
    genes_k <- (k - 1) * 8 + seq_len(8)
    rate[genes_k, cell_type == types[k]] <- 6
}
counts <- Matrix::Matrix(matrix(rpois(n_genes * n_cells, rate), n_genes), sparse = TRUE)
counts <- methods::as(counts, "CsparseMatrix")
check(methods::is(counts, "dgCMatrix"), "counts are not a dgCMatrix:", class(counts))
dimnames(counts) <- list(sprintf("gene%02d", seq_len(n_genes)), sprintf("cell%03d", seq_len(n_cells)))
label <- cell_type
label[c(4, 17, 50)] <- NA  # unlabelled cells: the tool predicts them, never trains on them
batch <- rep(1:3, length.out = n_cells)
batch[c(2, 33)] <- NA
sce <- SingleCellExperiment(
    assays = list(counts = counts),
    colData = DataFrame(cell_type = label, batch = batch,
                        donor = ifelse(seq_len(n_cells) %% 5 == 0, NA, paste0("d", seq_len(n_cells) %% 3)),
                        qc_pass = ifelse(seq_len(n_cells) %% 7 == 0, NA, seq_len(n_cells) %% 2 == 0),
                        size = Matrix::colSums(counts), row.names = colnames(counts)),
    rowData = DataFrame(symbol = paste0("SYM", seq_len(n_genes)),
                        chromosome = ifelse(seq_len(n_genes) %% 6 == 0, NA_integer_, seq_len(n_genes) %% 4L),
                        row.names = rownames(counts)))
reducedDim(sce, "PCA") <- matrix(rnorm(n_cells * 3), n_cells, dimnames = list(colnames(sce), NULL))
before <- sce

writeH5ad(sce, file.path(out, "input.h5ad"))
utils::write.csv(as.matrix(counts), file.path(out, "input_counts.csv"))
cd <- as.data.frame(colData(sce))
utils::write.csv(cd, file.path(out, "input_obs.csv"), na = "NA")
utils::write.csv(as.data.frame(rowData(sce)), file.path(out, "input_var.csv"), na = "NA")

# ---- classify from R ----
common <- list(layout = "profile", chunk_size = 6, hidden = 8, epochs = 2, min_steps = 0,
               seed = 0, device = "cpu", threads = 1, quiet = TRUE)
t0 <- Sys.time()
sce <- do.call(rnnClassify, c(list(sce, label = "cell_type", model_out = file.path(out, "model_r.h5")), common))
cat(sprintf("rnnClassify: %.1f s\n", as.numeric(Sys.time() - t0, units = "secs")))
print(sce)

check(identical(class(sce), class(before)), "class changed")
for (cn in colnames(colData(before)))
    check(identical(colData(sce)[[cn]], colData(before)[[cn]]), "colData", cn, "changed")
check(identical(rowData(sce)[colnames(rowData(before))], rowData(before)), "rowData changed")
check(identical(assay(sce, "counts"), assay(before, "counts")), "the counts changed")
check(identical(assayNames(sce), assayNames(before)), "assays added or removed by classify")
check(identical(reducedDim(sce, "PCA"), reducedDim(before, "PCA")), "reducedDim PCA changed")
check(is.factor(sce$rnn_pred), "rnn_pred is not a factor")
check(identical(levels(sce$rnn_pred), types), "rnn_pred levels:", levels(sce$rnn_pred))
check(is.numeric(sce$rnn_conf), "rnn_conf is not numeric")
check(all(c("rnn", "rnn_proba") %in% reducedDimNames(sce)), "reducedDims:", reducedDimNames(sce))
check(identical(dim(reducedDim(sce, "rnn_proba")), c(n_cells, 3L)), "rnn_proba shape")
check(identical(rownames(reducedDim(sce, "rnn")), colnames(sce)), "embedding rownames")
md <- metadata(sce)$rnn
check(is.list(md) && is.list(md$metrics) && is.numeric(md$metrics$rnn$accuracy), "no metrics in metadata")
check(identical(md$model_path, normalizePath(file.path(out, "model_r.h5"))), "model_path:", md$model_path)
check(file.exists(md$model_path), "the model file does not exist")
check(identical(readRnnModel(md$model_path)$classes, types), "model classes")

utils::write.csv(data.frame(name = colnames(sce), rnn_pred = as.character(sce$rnn_pred),
                            rnn_conf = sprintf("%.17g", sce$rnn_conf), rnn_split = as.character(sce$rnn_split)),
                 file.path(out, "r_classify_obs.csv"), row.names = FALSE, na = "")
utils::write.csv(reducedDim(sce, "rnn_proba"), file.path(out, "r_classify_proba.csv"))
utils::write.csv(reducedDim(sce, "rnn"), file.path(out, "r_classify_embedding.csv"))

# ---- apply the model to another object (the same cells, no labels) from R ----
fresh <- SingleCellExperiment(assays = list(counts = counts))
fresh <- do.call(rnnPredict, c(list(fresh, model = md$model_path, key_added = "again"),
                               common[c("seed", "device", "threads", "quiet")]))
check(is.factor(fresh$again_pred), "again_pred is not a factor")
check(identical(metadata(fresh)$again$model_path, md$model_path), "predict: model_path")
utils::write.csv(data.frame(name = colnames(fresh), again_pred = as.character(fresh$again_pred),
                            again_conf = sprintf("%.17g", fresh$again_conf)),
                 file.path(out, "r_predict_obs.csv"), row.names = FALSE, na = "")

# ---- an error of the tool is an R error carrying its one-line message ----
err <- tryCatch({
    do.call(rnnClassify, c(list(before, label = "no_such_column"), common))
    NULL
}, error = function(e) e)
check(inherits(err, "anndataRnnError"), "a wrong label did not raise an anndataRnnError")
writeLines(conditionMessage(err), file.path(out, "r_error.txt"))

jsonlite::write_json(list(n_cells = n_cells, n_genes = n_genes, accuracy = md$metrics$rnn$accuracy,
                          reduced_dims = reducedDimNames(sce), class = class(sce)[[1]]),
                     file.path(out, "summary.json"), auto_unbox = TRUE, digits = NA)
cat("OK\n")
