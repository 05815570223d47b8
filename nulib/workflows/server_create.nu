# server_create.nu: the workflow-creating commands (server, taskserv, cluster);
# see create.nu for usage. `use nulib/workflows/server_create.nu *`
export use ./create.nu *
