# The rnn* tests need the anndata-rnn command line. Without it they are skipped, naming
# what is missing, unless ANNDATA_RNN_REQUIRE_R=1 (CI): then they fail.
skip_without_tool <- function() {
    if (rnnAvailable()) return(invisible(TRUE))
    msg <- "the anndata-rnn command line is not installed (rnnExecutable() found none)"
    if (Sys.getenv("ANNDATA_RNN_REQUIRE_R") %in% c("", "0")) skip(msg)
    stop("ANNDATA_RNN_REQUIRE_R is set but ", msg)
}

# small single-cell data: three cell types, sparse counts
toy_sce <- function(n_cells = 60L, n_genes = 12L, seed = 1L) {
    set.seed(seed)
    types <- c("alpha", "beta", "gamma")
    cell_type <- factor(rep(types, length.out = n_cells), levels = types)
    rate <- matrix(1, n_genes, n_cells)
    for (k in seq_along(types)) {
        rows <- intersect((k - 1) * 4 + 1:4, seq_len(n_genes))
        rate[rows, cell_type == types[k]] <- 6
    }
    counts <- methods::as(Matrix::Matrix(matrix(rpois(n_genes * n_cells, rate), n_genes),
                                         sparse = TRUE), "CsparseMatrix")
    dimnames(counts) <- list(sprintf("g%02d", seq_len(n_genes)), sprintf("c%03d", seq_len(n_cells)))
    SingleCellExperiment(list(counts = counts), colData = DataFrame(cell_type = cell_type))
}

fast <- list(hidden = 8, epochs = 2, min_steps = 0, seed = 0, device = "cpu", threads = 1,
             quiet = TRUE)
