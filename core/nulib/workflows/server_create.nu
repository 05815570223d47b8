# server_create.nu at the original's path: `use core/nulib/workflows/server_create.nu *`
# gives server_create_workflow, taskserv_create_workflow and cluster_create_workflow
# (and wait-task), the same commands as nulib/workflows/server_create.nu, which
# holds them; this module only re-exports them so both paths keep working.
export use ../../../nulib/workflows/server_create.nu *
